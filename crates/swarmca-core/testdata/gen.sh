#!/usr/bin/env bash
# Regenerates the CSR and key fixtures of swarmca-core with the openssl CLI.
# Usage: bash crates/swarmca-core/testdata/gen.sh   (writes next to this script)
# The outputs are committed; tests never run this script.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

csr() { # name, subject, key options...
    local name=$1 subj=$2
    shift 2
    openssl req -new -nodes -keyout "$tmp/$name.key" -subj "$subj" "$@" -out "$name.csr" 2>/dev/null
}

# Accepted node keys.
csr p256 "/CN=p256-node" -newkey ec -pkeyopt ec_paramgen_curve:P-256
csr p384 "/CN=p384-node" -newkey ec -pkeyopt ec_paramgen_curve:P-384
csr rsa2048 "/CN=rsa2048-node" -newkey rsa:2048
# Rejected node keys.
csr rsa1024 "/CN=rsa1024-node" -newkey rsa:1024
csr ed25519 "/CN=ed25519-node" -newkey ed25519
csr p521 "/CN=p521-node" -newkey ec -pkeyopt ec_paramgen_curve:P-521
# A CSR that asks for everything it must not get: its own subject, SANs, CA:TRUE,
# certSign, a subject key identifier and a private extension.
csr malicious "/O=evil-org/OU=swarm-manager/CN=evil-node/L=Nowhere" \
    -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -addext "subjectAltName=DNS:evil.example,DNS:swarm-ca,IP:10.0.0.1" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=DE:AD:BE:EF" \
    -addext "1.3.6.1.4.1.99999.1=ASN1:UTF8String:hello"
# An empty subject, as Go clients send (CFSSL's default key request has no names).
csr empty_subject "/" -newkey ec -pkeyopt ec_paramgen_curve:P-256
# A certificate, to feed where a CSR is expected.
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$tmp/cert.key" -subj "/CN=not-a-csr" -days 1 -out not_a_csr.crt 2>/dev/null

# CA certificates and keys in the formats SwarmKit stores: SEC1 "EC PRIVATE KEY" (what
# cfssl initca writes), PKCS#1 "RSA PRIVATE KEY" and PKCS#8 "PRIVATE KEY".
ca() { # name, key options...
    local name=$1
    shift
    openssl req -x509 -new -nodes -keyout "$tmp/$name.pk8" -subj "/CN=$name" \
        -days 36500 "$@" -out "$name.crt" 2>/dev/null
}
ca ca_p256 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256
openssl ec -in "$tmp/ca_p256.pk8" -out ca_p256_sec1.key 2>/dev/null
cp "$tmp/ca_p256.pk8" ca_p256_pkcs8.key
ca ca_p384 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -sha384
openssl ec -in "$tmp/ca_p384.pk8" -out ca_p384_sec1.key 2>/dev/null
ca ca_rsa2048 -newkey rsa:2048 -sha256
openssl rsa -in "$tmp/ca_rsa2048.pk8" -traditional -out ca_rsa2048_pkcs1.key 2>/dev/null
cp "$tmp/ca_rsa2048.pk8" ca_rsa2048_pkcs8.key
ca ca_p521 -newkey ec -pkeyopt ec_paramgen_curve:P-521 -sha512
cp "$tmp/ca_p521.pk8" ca_p521_pkcs8.key
# A root without a subject key identifier (its leaves carry no AKI, as Go's do).
ca ca_p256_noski -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 \
    -addext "subjectKeyIdentifier=none" -addext "authorityKeyIdentifier=none"
cp "$tmp/ca_p256_noski.pk8" ca_p256_noski_pkcs8.key
# A root signed with SHA-1, an algorithm SwarmKit refuses for CAs.
ca ca_rsa_sha1 -newkey rsa:2048 -sha1
echo "fixtures written to $(pwd)"
