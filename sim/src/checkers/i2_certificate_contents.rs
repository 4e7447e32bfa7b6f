//! I2: an issued certificate names the node (CN), its requested role (OU), the cluster (O),
//! carries exactly the SwarmKit SANs, has the configured validity (NotBefore ≈ now − 1 h,
//! NotAfter − NotBefore = expiry + 1 h, where the expiry is the one the cluster asked for at
//! most a minute before the write — or the fake external CA's own profile for what it
//! signed; a leaf the expiry would take past its issuer's end is cut to it), never outlives
//! what it chains through, and chains to a root the cluster had. It is signed by the signer SwarmKit picks:
//! the external CA when the cluster lists one for the root being signed for, else locally
//! (with the same minute of lag allowed).

use std::time::{Duration, SystemTime};

use swarmca_core::role::Role;
use swarmca_core::rootca::digest;
use x509_parser::prelude::*;

use super::WriteCtx;
use crate::extca::PROFILE_EXPIRY;
use crate::mirror::Mirror;
use crate::shared::lock;

/// How long after a change of the configured expiry a certificate may still carry the
/// previous one: the leader learns of the change through its watch and may have signed just
/// before it (a commit may take 2 s, conflicts retry, a leader may be paused up to its 5 s
/// lease, an external CA attempt may last its 5 s deadline before the local fallback).
const SIGNER_LAG: Duration = Duration::from_secs(60);

pub fn check(m: &Mirror, ctx: &WriteCtx<'_>) {
    if ctx.state() != 3 || !ctx.new_certificate() {
        return;
    }
    let Some(c) = ctx.new.certificate.as_ref() else { return };
    if let Err(why) = contents(m, ctx, &c.certificate, c.role) {
        ctx.shared.violation("I2", format!("node {}: {why}", ctx.new.id));
    }
}

fn contents(m: &Mirror, ctx: &WriteCtx<'_>, pem: &[u8], role: i32) -> Result<(), String> {
    let role = Role::from_proto(role).ok_or("invalid role in the request")?;
    let chain: Vec<Vec<u8>> =
        x509_parser::pem::Pem::iter_from_buffer(pem).filter_map(|p| p.ok().map(|p| p.contents)).collect();
    let leaf = chain.first().ok_or("no certificate")?;
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| format!("unparsable: {e}"))?;
    let s = cert.subject();
    let text = |it: &mut dyn Iterator<Item = &AttributeTypeAndValue>| -> Vec<String> {
        it.filter_map(|a| a.as_str().ok().map(str::to_string)).collect()
    };
    let cns = text(&mut s.iter_common_name());
    let ous = text(&mut s.iter_organizational_unit());
    let os = text(&mut s.iter_organization());
    if cns != [ctx.new.id.clone()] {
        return Err(format!("CN {cns:?} is not the node ID"));
    }
    if ous != [role.ou().to_string()] {
        return Err(format!("OU {ous:?} is not the requested role {}", role.ou()));
    }
    if os != [ctx.shared.cluster_id.clone()] {
        return Err(format!("O {os:?} is not the cluster"));
    }
    let mut sans: Vec<String> = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for g in &ext.value.general_names {
            match g {
                GeneralName::DNSName(d) => sans.push(d.to_string()),
                other => return Err(format!("unexpected SAN {other:?}")),
            }
        }
    }
    let mut want = vec![role.ou().to_string(), ctx.new.id.clone()];
    if role == Role::Manager {
        want.push("swarm-ca".into());
    }
    if sans != want {
        return Err(format!("SANs {sans:?}, want {want:?}"));
    }
    extensions(&cert)?;
    let nb = cert.validity().not_before.timestamp();
    if nb.rem_euclid(60) != 0 {
        return Err(format!(
            "NotBefore {nb} is not on a whole minute (now rounded to the nearest minute, − 1 h)"
        ));
    }
    let na = cert.validity().not_after.timestamp();
    let now =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs() as i64;
    let slack = ctx.shared.opts.max_clock_skew.as_secs() as i64 + 120;
    if (nb - (now - 3600)).abs() > slack {
        return Err(format!("NotBefore {} s from now − 1 h", nb - (now - 3600)));
    }
    let lifetime = Duration::from_secs((na - nb).max(0) as u64);
    // The fake external CA signs with its own profile; the CA's own signer with the expiry
    // the cluster asked for when it signed, learnt through its watch.
    let external = lock(&ctx.shared.extca_issued).contains(&digest(leaf));
    let window = (ctx.now.saturating_sub(SIGNER_LAG), ctx.now);
    match (external, m.external_between(window.0, window.1).as_slice()) {
        (false, [true]) => {
            return Err(
                "signed locally while the cluster listed an external CA for the root being signed for".into(),
            )
        }
        (true, [false]) => {
            return Err(
                "signed by the external CA while the cluster listed none for the root being signed for"
                    .into(),
            )
        }
        _ => {}
    }
    // Nothing signed is valid beyond its issuer: not past the certificates it chains through,
    // nor past the root it chains to. A leaf the expiry would take further is cut to that end.
    let issuer_end = issuer_end(m, &chain);
    if let Some(end) = issuer_end.filter(|end| na > *end) {
        return Err(format!("valid until {na}, {} s beyond the end of its issuer ({end})", na - end));
    }
    let allowed = if external { vec![PROFILE_EXPIRY] } else { m.expiries_between(window.0, window.1) };
    let cut = |e: &Duration| issuer_end.is_some_and(|end| na == end && nb + e.as_secs() as i64 + 3600 > end);
    let whole = allowed.iter().any(|e| lifetime == *e + Duration::from_secs(3600));
    let ok = whole || allowed.iter().any(cut);
    if ok && !whole {
        ctx.shared.coverage.hit("cert.cut_to_issuer_end");
    }
    if !ok {
        let secs: Vec<u64> = allowed.iter().map(Duration::as_secs).collect();
        let by = if external { "the external CA's profile" } else { "the cluster's configuration" };
        return Err(format!(
            "lifetime {} s is not an expiry {by} allowed ({secs:?} s) + 1 h",
            lifetime.as_secs()
        ));
    }
    // Chains to a root the cluster had (root rotations make that several); most likely one
    // it has now.
    if ctx.shared.verify(&m.recent_roots, &chain).is_err() {
        ctx.shared
            .verify(&m.all_roots, &chain)
            .map_err(|e| format!("does not chain to any cluster root: {e}"))?;
    }
    Ok(())
}

/// The earliest NotAfter of what `chain`'s leaf chains through: the other certificates of the
/// bundle, and the root the cluster had that issued the last of them.
fn issuer_end(m: &Mirror, chain: &[Vec<u8>]) -> Option<i64> {
    let parsed: Vec<X509Certificate<'_>> =
        chain.iter().filter_map(|d| X509Certificate::from_der(d).ok().map(|(_, c)| c)).collect();
    let top = parsed.last()?;
    let mut ends: Vec<i64> = parsed.iter().skip(1).map(|c| c.validity().not_after.timestamp()).collect();
    // Roots may share a name (a rotation to a root of the same name): the issuer is the one
    // whose key identifier the top certificate names, when it names one.
    let aki = top.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0.to_vec()),
        _ => None,
    });
    for p in x509_parser::pem::Pem::iter_from_buffer(&m.all_roots).flatten() {
        let Ok((_, root)) = X509Certificate::from_der(&p.contents) else { continue };
        let ski = root.extensions().iter().find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        });
        let same_key = match (&aki, &ski) {
            (Some(a), Some(s)) => a == s,
            _ => true,
        };
        if root.subject().as_raw() == top.issuer().as_raw() && same_key {
            ends.push(root.validity().not_after.timestamp());
        }
    }
    ends.into_iter().min()
}

/// SwarmKit's leaf profile (docs/behaviour.md §4.4): X.509 v3; a positive serial of at most 20 bytes;
/// keyUsage critical with exactly digitalSignature and keyEncipherment; extKeyUsage exactly
/// serverAuth and clientAuth; basicConstraints critical, not a CA, no path length; a subject
/// key identifier.
fn extensions(cert: &X509Certificate<'_>) -> Result<(), String> {
    if cert.version() != X509Version::V3 {
        return Err(format!("version {:?}, want V3", cert.version()));
    }
    let serial = cert.raw_serial();
    let positive = serial.first().is_some_and(|b| b & 0x80 == 0) && serial.iter().any(|b| *b != 0);
    // One leading zero byte is DER's sign padding, not part of the 20 bytes.
    let len = serial.len() - usize::from(serial.len() > 1 && serial.first() == Some(&0));
    if !positive || len > 20 {
        return Err(format!("serial {} is not a positive number of at most 20 bytes", hex::encode(serial)));
    }
    match cert.key_usage() {
        Ok(Some(ku)) if ku.critical && ku.value.flags == 0b101 => {}
        other => return Err(format!("keyUsage {other:?}, want critical digitalSignature|keyEncipherment")),
    }
    match cert.extended_key_usage() {
        Ok(Some(eku))
            if eku.value.server_auth
                && eku.value.client_auth
                && !(eku.value.any
                    || eku.value.code_signing
                    || eku.value.email_protection
                    || eku.value.time_stamping
                    || eku.value.ocsp_signing)
                && eku.value.other.is_empty() => {}
        other => return Err(format!("extKeyUsage {other:?}, want serverAuth and clientAuth")),
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.critical && !bc.value.ca && bc.value.path_len_constraint.is_none() => {}
        other => return Err(format!("basicConstraints {other:?}, want critical CA:false")),
    }
    let ski = cert
        .extensions()
        .iter()
        .any(|e| matches!(e.parsed_extension(), ParsedExtension::SubjectKeyIdentifier(k) if !k.0.is_empty()));
    if !ski {
        return Err("no subject key identifier".into());
    }
    Ok(())
}
