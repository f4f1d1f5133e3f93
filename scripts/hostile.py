#!/usr/bin/env python3
"""Hostile load against a running vfgate on 127.0.0.1 (driven by scripts/hostile.sh).

A bounded mix of tampered bodies and signatures, truncated digests, random bytes, header
garbage, slowloris connections, over-size bodies and hostile JSON, then valid traffic.
Prints the answers by status and writes the ids of the valid events it sent (one per line)
to the file given as --valid-out. Everything goes to 127.0.0.1 and stops by itself.
"""
import argparse, hashlib, hmac, json, os, random, socket, sys, threading, time
from collections import Counter
from datetime import datetime, timezone

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--secret", required=True)
p.add_argument("--rounds", type=int, default=300)
p.add_argument("--valid", type=int, default=500)
p.add_argument("--slow", type=int, default=40)
p.add_argument("--slow-seconds", type=float, default=3.0)
p.add_argument("--seed", type=int, default=1)
p.add_argument("--valid-out", required=True)
a = p.parse_args()
rng = random.Random(a.seed)
key = a.secret.encode()
counts = Counter()


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def event(eid, **extra):
    e = {"event_id": eid, "event_type": "user.login", "timestamp": now(),
         "context": {"org_id": "org_h"}}
    e.update(extra)
    return json.dumps(e, separators=(",", ":")).encode()


def sig(body):
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def raw(data, read=True, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", a.port), timeout=timeout)
    try:
        s.sendall(data)
        if not read:
            return None
        buf = b""
        while b"\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        line = buf.split(b"\r\n", 1)[0].split(b" ")
        return line[1].decode() if len(line) > 1 else "closed"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()


def post(body, signature, extra=b"", version=b"1"):
    head = (b"POST /v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"X-VF-Webhook-Version: " + version + b"\r\nX-VF-Signature-256: " + signature.encode() +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n")
    return raw(head + body)


def hostile_round(i):
    kind = rng.randrange(9)
    if kind == 0:   # tampered body, signature of the original
        b = event(f"forged-{i}")
        counts["tampered " + str(post(b.replace(b"user.login", b"user.logon"), sig(b)))] += 1
    elif kind == 1:  # signature of another body
        counts["wrong-sig " + str(post(event(f"forged-{i}"), sig(event("other"))))] += 1
    elif kind == 2:  # truncated digest
        b = event(f"forged-{i}")
        counts["truncated " + str(post(b, sig(b)[: rng.randrange(7, 70)]))] += 1
    elif kind == 3:  # random bytes, random signature
        b = os.urandom(rng.randrange(1, 2048))
        counts["random " + str(post(b, "sha256=" + os.urandom(32).hex()))] += 1
    elif kind == 4:  # header garbage
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))
        counts["garbage " + str(raw(b"POST /v1/events HTTP/1.1\r\n" + junk + b"\r\n\r\n"))] += 1
    elif kind == 5:  # over-size body, declared
        counts["oversize " + str(raw(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{"))] += 1
    elif kind == 6:  # over-size body, chunked
        body = b"".join(b"4000\r\n" + b"x" * 0x4000 + b"\r\n" for _ in range(80)) + b"0\r\n\r\n"
        counts["oversize-chunked " + str(raw(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body))] += 1
    elif kind == 7:  # validly signed but hostile JSON: deep nesting, control characters
        b = (b'{"event_id":"forged-deep-' + str(i).encode() + b'","timestamp":"' + now().encode() +
             b'","x":' + b"[" * 5000 + b"]" * 5000 + b"}")
        counts["deep-json " + str(post(b, sig(b)))] += 1
    else:            # TE + CL smuggling attempt carrying a forged second request
        inner = event(f"forged-smuggled-{i}")
        smuggled = (b"POST /v1/events HTTP/1.1\r\nContent-Type: application/json\r\nX-VF-Webhook-Version: 1\r\n"
                    b"X-VF-Signature-256: sha256=00\r\nContent-Length: " + str(len(inner)).encode() + b"\r\n\r\n" + inner)
        b = event(f"forged-te-{i}")
        body = hex(len(b))[2:].encode() + b"\r\n" + b + b"\r\n0\r\n\r\n" + smuggled
        head = (b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-VF-Webhook-Version: 1\r\n"
                b"X-VF-Signature-256: " + sig(b"x").encode() + b"\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n")
        counts["te-cl " + str(raw(head + body))] += 1


def slowloris(stop):
    socks = []
    for _ in range(a.slow):
        try:
            s = socket.create_connection(("127.0.0.1", a.port), timeout=2)
            s.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\n\r\n{")
            socks.append(s)
        except OSError:
            counts["slowloris refused"] += 1
    t_start = time.time()
    while not stop.is_set() or time.time() - t_start < a.slow_seconds:
        for s in socks:
            try:
                s.sendall(b" ")
            except OSError:
                pass
        time.sleep(0.5)
    for s in socks:
        s.settimeout(0.2)
        try:
            head = s.recv(64)
            counts["slowloris " + (head.split(b" ")[1].decode() if head.count(b" ") else "closed")] += 1
        except OSError:
            counts["slowloris still open"] += 1
        s.close()


stop = threading.Event()
t = threading.Thread(target=slowloris, args=(stop,))
t.start()
t0 = time.time()
for i in range(a.rounds):
    hostile_round(i)
stop.set()
t.join()
valid = []
for i in range(a.valid):
    eid = f"valid-{a.seed}-{i}"
    b = event(eid)
    st = post(b, sig(b))
    counts["valid " + str(st)] += 1
    if st in ("200", "202"):
        valid.append(eid)
with open(a.valid_out, "w") as f:
    f.write("\n".join(valid) + "\n")
for k in sorted(counts):
    print(f"{counts[k]:6d}  {k}")
print(f"{time.time() - t0:.1f}s, {len(valid)} valid events acknowledged")
