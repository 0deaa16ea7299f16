#!/usr/bin/env python3
"""Memory per held request: hold N requests at once, read airlock's RSS, release them.

usage: python3 bench/holds.py [N] [BODY_BYTES]
Starts target/release/airlock with a throwaway config on 127.0.0.1, holds N DELETE
requests (each with a BODY_BYTES body), reads VmRSS and thread count from /proc,
denies them all through the admin API, and prints one line of results.
"""
import json, os, socket, subprocess, sys, tempfile, time, hashlib, urllib.request

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
BODY = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
KEY, TOKEN = "bench-agent-key", "bench-reviewer-token"
digest = lambda s: "sha256:" + hashlib.sha256(s.encode()).hexdigest()

tmp = tempfile.mkdtemp()
os.makedirs(f"{tmp}/rules")
open(f"{tmp}/rules/r.yaml", "w").write(
    "rules:\n  - name: hold\n    when: {method: DELETE}\n    then: approve\n"
    "    approval: {approvers: [group:sre], timeout: 10m}\n")
open(f"{tmp}/airlock.yaml", "w").write(f"""listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0}}
rules: rules/
workers: 2
upstreams: [{{name: api, prefix: /api, url: "demo:"}}]
agents: [{{id: bot, key: "{digest(KEY)}"}}]
reviewers: [{{id: rev, groups: [sre], token: "{digest(TOKEN)}"}}]
limits: {{max_held: {N + 10}}}
log: {{level: warn}}
""")
binary = os.path.join(os.path.dirname(__file__), "..", "target", "release", "airlock")
p = subprocess.Popen([binary, "serve", "-c", f"{tmp}/airlock.yaml"], stdout=subprocess.PIPE, text=True)
proxy = admin = None
while not (proxy and admin):
    line = p.stdout.readline()
    if not line:
        sys.exit("airlock did not start")
    if "proxy listening on http://" in line: proxy = line.split("http://")[1].strip()
    if "admin listening on http://" in line: admin = line.split("http://")[1].strip()

def status():
    s = {}
    for l in open(f"/proc/{p.pid}/status"):
        k, v = l.split(":", 1)
        s[k] = v.strip()
    return int(s["VmRSS"].split()[0]), int(s["Threads"])

def api(path, body=None):
    req = urllib.request.Request(f"http://{admin}{path}", data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))

def count():
    return len(api(f"/api/v1/approvals?status=pending&limit={N + 10}")["approvals"])

# Warm up: one hold and release, so lazily created state is not counted.
host, port = proxy.split(":")
def send(i):
    s = socket.create_connection((host, int(port)))
    body = (f"{i:08d}" + "x" * BODY)[:BODY].encode()
    s.sendall(f"DELETE /api/things/{i} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return s

w = send(10**7)
while count() < 1: time.sleep(0.05)
for a in api("/api/v1/approvals?status=pending")["approvals"]:
    api(f"/api/v1/approvals/{a['id']}/votes", {"decision": "deny"})
w.recv(4096); w.close()
time.sleep(0.5)
rss0, thr0 = status()
socks = [send(i) for i in range(N)]
t0 = time.time()
while count() < N: time.sleep(0.1)
held_s = time.time() - t0
time.sleep(0.5)
rss1, thr1 = status()
p.terminate(); p.wait()
for s in socks: s.close()
per = (rss1 - rss0) * 1024 / N
print(f"held={N} body={BODY}B rss_before={rss0}KiB rss_held={rss1}KiB per_hold={per:.0f}B "
      f"threads_before={thr0} threads_held={thr1} time_to_hold_all={held_s:.1f}s")
