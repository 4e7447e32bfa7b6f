//! I2: an issued certificate names the node (CN), its requested role (OU), the cluster (O),
//! carries exactly the SwarmKit SANs, has the configured validity (NotBefore ≈ now − 1 h,
//! NotAfter − NotBefore = expiry + 1 h for some expiry the cluster was configured with), and
//! chains to a root the cluster had.

use std::time::{Duration, SystemTime};

use swarmca_core::role::Role;
use swarmca_core::rootca::DEFAULT_NODE_CERT_EXPIRY;
use x509_parser::prelude::*;

use super::WriteCtx;
use crate::mirror::Mirror;

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
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    let now =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs() as i64;
    let slack = ctx.shared.opts.max_clock_skew.as_secs() as i64 + 120;
    if (nb - (now - 3600)).abs() > slack {
        return Err(format!("NotBefore {} s from now − 1 h", nb - (now - 3600)));
    }
    let lifetime = Duration::from_secs((na - nb).max(0) as u64);
    let ok = m.expiries.iter().chain(std::iter::once(&DEFAULT_NODE_CERT_EXPIRY)).any(|e| {
        let want = *e + Duration::from_secs(3600);
        lifetime.abs_diff(want) <= Duration::from_secs(1)
    });
    if !ok {
        return Err(format!("lifetime {} s matches no configured expiry + 1 h", lifetime.as_secs()));
    }
    // Chains to a root the cluster had (root rotations make that several).
    m.trust
        .as_ref()
        .ok_or("no cluster root known")?
        .verify_peer(&chain, SystemTime::now())
        .map_err(|e| format!("does not chain to any cluster root: {e}"))?;
    Ok(())
}
