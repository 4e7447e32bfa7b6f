#!/usr/bin/env bash
# Regenerates the committed seed corpus of every fuzz target (fuzz/seeds/<target>/).
# Usage: bash fuzz/seeds/make-seeds.sh      (needs openssl and python3; rewrites the seeds)
# Keys and random seeds differ on every run; the committed files are what CI replays.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in csr_der csr_pem join_token proto_requests cfssl_response issuance_ops; do
    rm -rf "$t" && mkdir -p "$t"
done

# --- csr_der / csr_pem: real CSRs from openssl -------------------------------------------
csr() { # name, subject, openssl req options...
    local name=$1 subj=$2
    shift 2
    openssl req -new -nodes -keyout "$tmp/$name.key" -subj "$subj" "$@" -out "$tmp/$name.pem" 2>/dev/null
    cp "$tmp/$name.pem" "csr_pem/$name.pem"
    openssl req -in "$tmp/$name.pem" -outform DER -out "csr_der/$name.der"
}
p256=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
p384=(-newkey ec -pkeyopt ec_paramgen_curve:P-384)
exts=(-addext "subjectAltName=DNS:node.example,DNS:swarm-ca,IP:10.0.0.1,email:a@b.example"
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
      -addext "extendedKeyUsage=serverAuth,clientAuth" -addext "subjectKeyIdentifier=DE:AD:BE:EF"
      -addext "1.3.6.1.4.1.99999.1=ASN1:UTF8String:hello")
csr p256 "/CN=p256-node" "${p256[@]}"
csr p256_sans "/O=org/OU=swarm-worker/CN=p256-sans" "${p256[@]}" "${exts[@]}"
csr p384 "/CN=p384-node" "${p384[@]}"
csr p384_sans "/CN=p384-sans/L=Somewhere/C=FR" "${p384[@]}" -addext "subjectAltName=DNS:x.example"
csr rsa2048 "/CN=rsa2048-node" -newkey rsa:2048
csr rsa2048_sans "/CN=rsa2048-sans" -newkey rsa:2048 "${exts[@]}"
csr rsa2048_pss "/CN=rsa-pss-node" -newkey rsa:2048 -sigopt rsa_padding_mode:pss
csr ed25519 "/CN=ed25519-node" -newkey ed25519
csr ed25519_sans "/CN=ed25519-sans" -newkey ed25519 -addext "subjectAltName=DNS:e.example"
csr p521 "/CN=p521-node" -newkey ec -pkeyopt ec_paramgen_curve:P-521
csr rsa1024 "/CN=rsa1024-node" -newkey rsa:1024
csr p256_sha1 "/CN=p256-sha1" "${p256[@]}" -sha1
# Go's x509.CreateCertificateRequest with CFSSL's default key request: an empty subject.
csr empty_subject "/" "${p256[@]}"
# A challenge password attribute next to the extension request.
printf '[req]\ndistinguished_name=dn\nattributes=attrs\nprompt=no\n[dn]\nCN=attrs-node\n[attrs]\nchallengePassword=secret123\nunstructuredName=unstructured\n' >"$tmp/attrs.cnf"
csr attributes "/CN=attrs-node" "${p256[@]}" -config "$tmp/attrs.cnf"

# Variants: truncated, bit-flipped, huge lengths, trailing data, wrong envelope.
python3 - <<'PY'
import base64, os, random
random.seed(20260601)
der = {n[:-4]: open(f"csr_der/{n}", "rb").read() for n in sorted(os.listdir("csr_der"))}
base = der["p256"]
out = {}
for cut in (1, 2, 10, len(base) // 2, len(base) - 1):
    out[f"trunc_{cut}"] = base[:cut]
for i in range(6):
    b = bytearray(der[random.choice(sorted(der))])
    pos = random.randrange(len(b))
    b[pos] ^= 1 << random.randrange(8)
    out[f"bitflip_{i}"] = bytes(b)
# Outer length claims 4 GiB / 2^63; a length of length 0x84 and 0x88.
out["huge_len_4g"] = b"\x30\x84\xff\xff\xff\xff" + base[4:]
out["huge_len_8b"] = b"\x30\x88\x7f\xff\xff\xff\xff\xff\xff\xff" + base[4:]
out["indefinite_len"] = b"\x30\x80" + base[4:] + b"\x00\x00"
out["trailing_data"] = base + b"\x00"
out["nested_seq"] = b"\x30\x02" * 2000
out["nested_ctx"] = b"\xa0\x02" * 2000
out["empty"] = b""
out["empty_seq"] = b"\x30\x00"
# Signature BIT STRING with a non-zero unused-bits count.
i = base.rfind(b"\x03", 0, len(base) - 64)
b = bytearray(base)
sig = base.rfind(b"\x03")
for k in range(len(base) - 80, len(base)):
    if base[k] == 0x03 and base[k + 1] == len(base) - k - 2:
        b[k + 2] = 1
        break
out["sig_unused_bits"] = bytes(b)
# BER lengths on the unsigned envelope (outer SEQUENCE, signature algorithm, its OID, signature
# BIT STRING) and odd signature-algorithm parameters: the signature still verifies, DER does not.
def tlv(tag, v, n=None):
    if n is None:
        n = 0 if len(v) < 0x80 else (len(v).bit_length() + 7) // 8
    return bytes([tag, len(v)] if n == 0 else [tag, 0x80 | n]) + (len(v).to_bytes(n, "big") if n else b"") + v
def parts(d):
    def hdr(b, i):
        l = b[i + 1]
        if l < 0x80:
            return l, i + 2
        n = l & 0x7f
        return int.from_bytes(b[i + 2:i + 2 + n], "big"), i + 2 + n
    L, s = hdr(d, 0)
    body = d[s:s + L]
    l1, s1 = hdr(body, 0)
    info, rest = body[:s1 + l1], body[s1 + l1:]
    l2, s2 = hdr(rest, 0)
    return info, rest[s2:s2 + l2], rest[s2 + l2 + 2 + (1 if rest[s2 + l2 + 1] & 0x80 else 0):]
info, alg, sig = parts(base)
oid = alg[2:]
out["ber_outer_len"] = tlv(0x30, info + tlv(0x30, alg) + tlv(0x03, sig), 3)
out["ber_alg_len"] = tlv(0x30, info + tlv(0x30, alg, 1) + tlv(0x03, sig))
out["ber_oid_len"] = tlv(0x30, info + tlv(0x30, tlv(0x06, oid, 1)) + tlv(0x03, sig))
out["ber_sig_len"] = tlv(0x30, info + tlv(0x30, alg) + tlv(0x03, sig, 2))
out["alg_params_null"] = tlv(0x30, info + tlv(0x30, alg + b"\x05\x00") + tlv(0x03, sig))
out["alg_params_bool"] = tlv(0x30, info + tlv(0x30, alg + b"\x01\x01\xff") + tlv(0x03, sig))
for name, data in out.items():
    open(f"csr_der/{name}.der", "wb").write(data)
    if name.startswith(("ber_", "alg_params_")):
        pem_body = base64.encodebytes(data).decode()
        open(f"csr_pem/{name}.pem", "w").write(f"-----BEGIN CERTIFICATE REQUEST-----\n{pem_body}-----END CERTIFICATE REQUEST-----\n")
# PEM variants.
pem = open("csr_pem/p256.pem", "rb").read()
body = pem.split(b"\n", 1)[1].rsplit(b"-----END", 1)[0]
open("csr_pem/new_label.pem", "wb").write(pem.replace(b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"))
open("csr_pem/crlf.pem", "wb").write(pem.replace(b"\n", b"\r\n"))
open("csr_pem/junk_before.pem", "wb").write(b"junk\n-----BEGIN X-----\nnot base64\n" + pem)
open("csr_pem/wrong_label.pem", "wb").write(pem.replace(b"CERTIFICATE REQUEST", b"CERTIFICATE"))
open("csr_pem/headers.pem", "wb").write(pem.replace(b"-----\n", b"-----\nProc-Type: 4,ENCRYPTED\n\n", 1))
open("csr_pem/bad_base64.pem", "wb").write(pem.replace(body[:10], b"!!!!!!!!!!"))
open("csr_pem/truncated.pem", "wb").write(pem[: len(pem) // 2])
open("csr_pem/two_blocks.pem", "wb").write(open("csr_pem/ed25519.pem", "rb").read() + pem)
open("csr_pem/no_end.pem", "wb").write(pem.rsplit(b"-----END", 1)[0])
open("csr_pem/empty", "wb").write(b"")
PY

# --- join_token ----------------------------------------------------------------------------
python3 - <<'PY'
import random, string
random.seed(7)
a = string.digits + string.ascii_lowercase
def b36(n, w):
    s = ""
    while n:
        n, r = divmod(n, 36)
        s = a[r] + s
    return s.rjust(w, "0")
d = b36(random.getrandbits(256), 50)
s = b36(random.getrandbits(128), 25)
tokens = {
    "v1": f"SWMTKN-1-{d}-{s}",
    "v2_fips": f"SWMTKN-2-1-{d}-{s}",
    "v2_nofips": f"SWMTKN-2-0-{d}-{s}",
    "upper": f"SWMTKN-1-{d.upper()}-{s.upper()}",
    "digest_max": f"SWMTKN-1-{b36(2**256 - 1, 50)}-{s}",
    "digest_overflow": f"SWMTKN-1-{b36(2**256, 50)}-{s}",
    "digest_z": f"SWMTKN-1-{'z' * 50}-{s}",
    "short_secret": f"SWMTKN-1-{d}-{s[:-1]}",
    "long_digest": f"SWMTKN-1-0{d}-{s}",
    "bad_char": f"SWMTKN-1-{d[:-1]}_-{s}",
    "three_parts": f"SWMTKN-1-{d}",
    "six_parts": f"SWMTKN-2-1-{d}-{s}-x",
    "v3": f"SWMTKN-3-{d}-{s}",
    "bad_prefix": f"SWMTKM-1-{d}-{s}",
    "bad_flag": f"SWMTKN-2-2-{d}-{s}",
    "empty": "",
    "dashes": "----",
    "unicode": f"SWMTKN-1-{d[:-1]}é-{s}",
}
for k, v in tokens.items():
    open(f"join_token/{k}", "wb").write(v.encode())
open("join_token/binary_49", "wb").write(bytes(random.getrandbits(8) for _ in range(49)))
PY

# --- proto_requests: selector byte + protobuf body -----------------------------------------
python3 - <<'PY'
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])
def field(num, wt, payload):
    key = varint(num << 3 | wt)
    if wt == 0:
        return key + varint(payload)
    return key + varint(len(payload)) + payload
csr = open("csr_pem/p256.pem", "rb").read()
seeds = {
    "issue_no_token": (0, field(2, 2, csr)),
    "issue_bad_token": (0, field(2, 2, csr) + field(3, 2, b"SWMTKN-1-abc-def") + field(4, 0, 1)),
    "issue_empty_csr": (0, field(3, 2, b"x")),
    "issue_role_field": (0, field(1, 0, 1) + field(2, 2, b"garbage")),
    "status_empty": (1, b""),
    "status_issued": (1, field(1, 2, b"fuzzissuednode000000000000")),
    "status_failed": (1, field(1, 2, b"fuzzfailednode000000000000")),
    "status_unknown": (1, field(1, 2, b"nosuchnode")),
    "root": (2, b""),
    "unlock_key": (3, b""),
    "join_token_worker": (4, b""),
    "join_token_manager_rotate": (4, field(1, 0, 1) + field(2, 0, 1)),
    "join_token_bad_role": (4, field(1, 0, 7)),
    "list": (5, b""),
    "inspect": (6, field(1, 2, b"fuzzissuednode000000000000")),
    "promote": (7, field(1, 2, b"fuzzissuednode000000000000")),
    "demote": (8, field(1, 2, b"fuzzmanagernode00000000000")),
    "accept": (9, field(1, 2, b"nosuchnode")),
    "remove_manager": (10, field(1, 2, b"fuzzmanagernode00000000000")),
    "remove_manager_force": (10, field(1, 2, b"fuzzmanagernode00000000000") + field(2, 0, 1)),
    "remove_worker": (10, field(1, 2, b"fuzzissuednode000000000000")),
    "cluster_info": (11, b""),
    "update_expiry": (12, field(1, 0, 7200) + field(2, 0, 1)),
    "update_expiry_low": (12, field(1, 0, 60)),
    "update_external": (12, field(3, 0, 1) + field(4, 2, field(1, 2, b"https://ca.example:8888/api/v1/cfssl/sign"))),
    "update_external_bad": (12, field(3, 0, 1) + field(4, 2, field(1, 2, b"ftp://x"))),
    "unlock_rotate": (13, field(1, 0, 1)),
    "unknown_fields": (0, field(15, 2, b"x" * 10) + field(2, 2, csr)),
    "bad_varint": (0, b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
    "huge_len": (12, b"\x22\xff\xff\xff\xff\x0f"),
}
for k, (sel, body) in seeds.items():
    open(f"proto_requests/{k}", "wb").write(bytes([sel]) + body)
PY

# --- cfssl_response: 2 bytes status selector, 3 bytes padding, 1 byte frame size, body -----
python3 - <<'PY'
import json
cert = open("csr_pem/p256.pem").read().replace("CERTIFICATE REQUEST", "CERTIFICATE")
def seed(name, status_sel, body, pad=(0, 0, 0), frame=4):
    hdr = bytes([status_sel, 0, *pad, frame])
    open(f"cfssl_response/{name}", "wb").write(hdr + body)
ok = json.dumps({"success": True, "result": {"certificate": cert}, "errors": [], "messages": []}).encode()
seed("ok", 0, ok)
seed("ok_padded_past_cap", 0, ok, pad=(0xff, 0xff, 0xff))  # whitespace to 64 KiB past the cap
seed("ok_padded_just_under", 0, ok, pad=(0x00, 0x60, 0xf0), frame=255)  # ends just under the cap
seed("rejected", 0, json.dumps({"success": False, "result": None, "errors": [{"code": 9002, "message": "CSR Decode failed"}]}).encode())
seed("failed_no_errors", 0, b'{"success":false,"result":null,"errors":[]}')
seed("result_not_object", 0, b'{"success":true,"result":[1,2]}')
seed("certificate_not_string", 0, b'{"success":true,"result":{"certificate":5}}')
seed("null", 0, b"null")
seed("not_json", 0, b"<html>502</html>")
seed("status_400_csr_error", 1, json.dumps({"success": False, "errors": [{"code": 9300, "message": "not a csr"}]}).encode())
seed("status_400_other", 1, json.dumps({"success": False, "errors": [{"code": 1000, "message": "x"}]}).encode())
seed("status_500", 2, b"internal error " * 200)
seed("status_raw_999", 0x80 | 0x67, b"{}")
seed("deep_nesting", 0, b"[" * 5000)
seed("big_number", 0, b'{"success":true,"errors":[{"code":1e999999,"message":"x"}]}')
seed("unicode", 0, '{"success":true,"result":{"certificate":"\\ud800"}}'.encode())
PY

# --- issuance_ops: random operation sequences (the fuzzer learns the structure) -----------
python3 - <<'PY'
import random
random.seed(99)
for i, n in enumerate([16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536]):
    open(f"issuance_ops/random_{i:02}", "wb").write(bytes(random.getrandbits(8) for _ in range(n)))
PY
echo "seeds written: $(find . -type f ! -name '*.sh' | wc -l) files"
