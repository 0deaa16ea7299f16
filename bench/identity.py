#!/usr/bin/env python3
"""What each way of authenticating costs per request, on one keep-alive connection.

usage: python3 bench/identity.py [N] [ROUNDS]   (needs: pip install pyjwt cryptography)
Builds nothing: runs target/release/airlock (cargo build --release first) with a
throwaway config on 127.0.0.1: certificates from `airlock certs dev`, a key agent, an
RS256 and an ES256 JWT agent (JWKS file), an mTLS agent, the demo upstream. Sends N
sequential GETs per case over one connection and prints the median and p99 latency
and the median's difference to plain HTTP with a key. The cases alternate over ROUNDS
rounds (default 3) and each reports its best round, so a busy machine blurs less. The
client is Python, so the absolute numbers include its overhead; the differences are
what authentication adds.
"""
import http.client, json, os, ssl, statistics, subprocess, sys, tempfile, time, hashlib
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
KEY = "bench-agent-key"
digest = lambda s: "sha256:" + hashlib.sha256(s.encode()).hexdigest()
here = os.path.dirname(os.path.abspath(__file__))
binary = os.path.join(here, "..", "target", "release", "airlock")

tmp = tempfile.mkdtemp()
subprocess.run([binary, "certs", "dev", "--out", f"{tmp}/certs", "--agent", "bench-mtls"],
               check=True, stdout=subprocess.DEVNULL)
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_key = ec.generate_private_key(ec.SECP256R1())
jwks = {"keys": [
    dict(json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key())), kid="r1", alg="RS256", use="sig"),
    dict(json.loads(ECAlgorithm.to_jwk(ec_key.public_key())), kid="e1", alg="ES256", use="sig"),
]}
open(f"{tmp}/jwks.json", "w").write(json.dumps(jwks))
os.makedirs(f"{tmp}/rules")
open(f"{tmp}/rules/r.yaml", "w").write("rules: []\n")


def config(tls):
    t = f"tls: {{cert: certs/airlock.pem, key: certs/airlock-key.pem, client_ca: certs/dev-ca.pem}}\n" if tls else ""
    mtls = "  - {id: bench-mtls, mtls: {subject: \"CN=bench-mtls\"}}\n" if tls else ""
    return f"""listen: 127.0.0.1:0
{t}rules: rules/
workers: 2
upstreams: [{{name: api, prefix: /api, url: "demo:"}}]
agents:
  - {{id: bot, key: "{digest(KEY)}"}}
  - {{id: rs-agent, jwt: {{issuer: https://idp.bench, audience: airlock, jwks: jwks.json, algorithms: [RS256]}}}}
  - {{id: es-agent, jwt: {{issuer: https://idp.bench, audience: airlock, jwks: jwks.json, algorithms: [ES256]}}}}
{mtls}log: {{level: warn}}
audit: {{level: held}}
"""


def start(tls):
    path = f"{tmp}/airlock-{'tls' if tls else 'plain'}.yaml"
    open(path, "w").write(config(tls))
    p = subprocess.Popen([binary, "serve", "-c", path], stdout=subprocess.PIPE, text=True)
    while True:
        line = p.stdout.readline()
        if not line:
            sys.exit("airlock did not start")
        for scheme in ("https://", "http://"):
            if f"proxy listening on {scheme}" in line:
                return p, line.split(scheme)[1].strip()


def token(key, alg, kid, sub):
    now = int(time.time())
    return jwt.encode({"iss": "https://idp.bench", "aud": "airlock", "sub": sub,
                       "iat": now, "exp": now + 3600}, key, algorithm=alg, headers={"kid": kid})


def run(addr, headers, ctx=None):
    host, port = addr.rsplit(":", 1)
    c = (http.client.HTTPSConnection(host, int(port), context=ctx) if ctx
         else http.client.HTTPConnection(host, int(port)))
    lat = []
    for i in range(N + 200):
        t = time.perf_counter()
        c.request("GET", "/api/v1/things", headers=headers)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"status {r.status}")
        if i >= 200:  # warm-up excluded
            lat.append(time.perf_counter() - t)
    c.close()
    lat.sort()
    return statistics.median(lat) * 1e6, lat[int(len(lat) * 0.99)] * 1e6


best = {}
def keep(name, med, p99):
    if name not in best or med < best[name][0]:
        best[name] = (med, p99)

cases = [
    ("plain HTTP, key", {"Authorization": f"Bearer {KEY}"}),
    ("plain HTTP, JWT RS256", {"Authorization": "Bearer " + token(rsa_key, "RS256", "r1", "rs-agent")}),
    ("plain HTTP, JWT ES256", {"Authorization": "Bearer " + token(ec_key, "ES256", "e1", "es-agent")}),
]
ctx = ssl.create_default_context(cafile=f"{tmp}/certs/dev-ca.pem")
ctx.check_hostname = False
mctx = ssl.create_default_context(cafile=f"{tmp}/certs/dev-ca.pem")
mctx.check_hostname = False
mctx.load_cert_chain(f"{tmp}/certs/agent.pem", f"{tmp}/certs/agent-key.pem")
plain, plain_addr = start(False)
tls, tls_addr = start(True)
for _ in range(ROUNDS):
    for name, h in cases:
        keep(name, *run(plain_addr, h))
    keep("TLS 1.3, key", *run(tls_addr, {"Authorization": f"Bearer {KEY}"}, ctx))
    keep("TLS 1.3, mTLS certificate", *run(tls_addr, {}, mctx))
for p in (plain, tls):
    p.terminate(); p.wait()
rows = [(name, med, p99) for name, (med, p99) in best.items()]

base = rows[0][1]
print(f"| case ({N} sequential GETs, one connection; best of {ROUNDS} rounds) | median µs | p99 µs | median − key over HTTP |")
print("|---|---|---|---|")
for name, med, p99 in rows:
    print(f"| {name} | {med:.0f} | {p99:.0f} | {med - base:+.0f} µs |")
