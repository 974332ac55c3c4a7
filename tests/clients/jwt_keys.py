"""Keys, tokens and a JWKS server for tests/it/auth_keys/, made by libraries that share
no code with herald: PyJWT with `cryptography` (pinned in requirements.txt).

    python3 jwt_keys.py make DIR < spec.json
        spec: {"keys": {"NAME": "RSA" | "P-256" | "P-384" | "Ed25519", ...},
               "tokens": [{"name": ..., "key": NAME, "alg": ..., "claims": {...},
                           "headers": {...}}, ...]}
        Writes DIR/NAME.pub.pem for every key and prints one JSON object:
        {"tokens": {name: token}, "jwks": {NAME: public JWK}}. A token with
        "hmac_with_public_pem": true is an HS256 token whose secret is the key's public PEM
        (made with hmac here: PyJWT refuses to do that, rightly).

    python3 jwt_keys.py serve-jwks CERT KEY FILE
        Serves FILE (read again on every request) at https://127.0.0.1:PORT/jwks.json with
        the certificate CERT and its key KEY. Prints "listening PORT", then one line
        "fetch /jwks.json" per request, flushed, so the test can count them.
"""

import base64
import hashlib
import hmac
import http.server
import json
import ssl
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def generate(kind):
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "P-256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "P-384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise SystemExit(f"unknown key kind {kind}")


def public_jwk(kind, public_key):
    if kind == "RSA":
        return RSAAlgorithm.to_jwk(public_key, as_dict=True)
    if kind in ("P-256", "P-384"):
        return ECAlgorithm.to_jwk(public_key, as_dict=True)
    return OKPAlgorithm.to_jwk(public_key, as_dict=True)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hmac_token(secret, claims, headers):
    header = {"alg": "HS256", "typ": "JWT", **headers}
    signing_input = (
        b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def make(directory):
    spec = json.load(sys.stdin)
    private = {}
    pem = {}
    jwks = {}
    for name, kind in spec["keys"].items():
        key = generate(kind)
        private[name] = key
        pem[name] = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with open(f"{directory}/{name}.pub.pem", "wb") as out:
            out.write(pem[name])
        jwks[name] = public_jwk(kind, key.public_key())
    tokens = {}
    for token in spec["tokens"]:
        headers = token.get("headers", {})
        if token.get("hmac_with_public_pem"):
            tokens[token["name"]] = hmac_token(pem[token["key"]], token["claims"], headers)
        else:
            tokens[token["name"]] = jwt.encode(
                token["claims"], private[token["key"]], algorithm=token["alg"], headers=headers
            )
    json.dump({"tokens": tokens, "jwks": jwks}, sys.stdout)
    print(flush=True)


def serve_jwks(cert, key, path):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/jwks.json":
                self.send_error(404)
                return
            print("fetch /jwks.json", flush=True)
            with open(path, "rb") as source:
                body = source.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "make":
        make(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "serve-jwks":
        serve_jwks(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(__doc__)
