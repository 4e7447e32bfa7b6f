//! A root CA key held in a PKCS#11 token, with SoftHSM2 (Debian `softhsm2`; installed by
//! scripts/test, skipped with a message when missing unless SWARMCA_REQUIRE_SOFTHSM=1): the real
//! binary serves with the token's key, joins and renewals verify with openssl, a root rotation
//! to a second token key completes, a restart finds the key again, and no form of either key
//! is ever in the data directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use swarmca_core::rootca::generate_root;

use crate::cli::{free_port, join, openssl_verify, run, text, Server, TempDir};
use crate::custody::assert_no_key_under;

const MODULES: [&str; 2] =
    ["/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"];

/// A SoftHSM2 token of its own (config and token directory in `dir`), or `None` when SoftHSM2
/// is not installed.
struct Token {
    conf: PathBuf,
    module: String,
    pin_file: PathBuf,
}

impl Token {
    fn new(dir: &Path) -> Option<Token> {
        let module = MODULES.iter().find(|m| Path::new(m).exists());
        let util = Command::new("softhsm2-util").arg("--version").output();
        let (Some(module), Ok(_)) = (module, util) else {
            assert!(
                std::env::var_os("SWARMCA_REQUIRE_SOFTHSM").is_none(),
                "SoftHSM2 is required (SWARMCA_REQUIRE_SOFTHSM) but not installed"
            );
            println!("skipped: SoftHSM2 not installed (apt-get install softhsm2)");
            return None;
        };
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let pin_file = dir.join("pin");
        std::fs::write(&pin_file, "1234\n").unwrap();
        std::fs::set_permissions(&pin_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let t = Token { conf, module: module.to_string(), pin_file };
        t.util(&["--init-token", "--free", "--label", "swarmca", "--pin", "1234", "--so-pin", "5678"]);
        Some(t)
    }

    fn util(&self, args: &[&str]) {
        let o = Command::new("softhsm2-util").args(args).env("SOFTHSM2_CONF", &self.conf).output().unwrap();
        assert!(o.status.success(), "softhsm2-util {args:?}: {}{}", text(&o.stdout), text(&o.stderr));
    }

    /// A new root whose key is imported into the token as `label` (and removed from disk):
    /// (certificate file, key URI, the key's PEM for the scans).
    fn root(&self, dir: &Path, label: &str, id: &str, serial: u8) -> (String, String, Vec<u8>) {
        let g = generate_root(label, SystemTime::now(), [serial; 20]).unwrap();
        let (cert, key) = (dir.join(format!("{label}.crt")), dir.join(format!("{label}.key")));
        std::fs::write(&cert, &g.cert_pem).unwrap();
        std::fs::write(&key, &g.key_pem).unwrap();
        self.util(&[
            "--import",
            key.to_str().unwrap(),
            "--token",
            "swarmca",
            "--label",
            label,
            "--id",
            id,
            "--pin",
            "1234",
        ]);
        std::fs::remove_file(&key).unwrap();
        (cert.to_str().unwrap().into(), format!("pkcs11:token=swarmca;object={label}"), g.key_pem)
    }

    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut a =
            vec!["--pkcs11-module", &self.module, "--pkcs11-pin-file", self.pin_file.to_str().unwrap()];
        a.extend_from_slice(extra);
        a
    }

    fn spawn(&self, data: &Path, port: u16, extra: &[&str]) -> Server {
        let s = Server::spawn_env(
            data,
            port,
            &self.args(extra),
            &[("SOFTHSM2_CONF", self.conf.to_str().unwrap())],
        );
        s.wait_ready();
        s
    }
}

fn renew(s: &Server, dir: &Path, if_needed: bool) -> std::process::Output {
    let mut a = vec!["renew", "--cert-dir", dir.to_str().unwrap(), "--timeout", "10s"];
    if if_needed {
        a.push("--if-needed");
    }
    a.push(&s.addr);
    run(&a)
}

#[test]
fn a_root_key_in_a_pkcs11_token_signs_joins_renewals_and_a_rotation_and_never_touches_disk() {
    let tmp = TempDir::new("hsm");
    let Some(token) = Token::new(tmp.path()) else { return };
    let (cert, uri, key_pem) = token.root(tmp.path(), "root1", "01", 1);
    let data = tmp.path().join("data");
    let port = free_port();
    let s = token.spawn(&data, port, &["--ca-cert", &cert, "--ca-key", &uri]);

    let d = tmp.path().join("w");
    let o = join(&s.addr, &s.token("worker"), &d);
    assert!(o.status.success(), "{}", text(&o.stderr));
    openssl_verify(&d);
    let o = renew(&s, &d, false);
    assert!(o.status.success(), "{}", text(&o.stderr));
    openssl_verify(&d);
    assert_no_key_under(&data, &key_pem, &["seal.key"]);

    // A restart finds the key in the token again from the URI in the cluster record.
    assert!(s.terminate().success());
    let s = token.spawn(&data, port, &[]);
    let o = join(&s.addr, &s.token("worker"), &tmp.path().join("w2"));
    assert!(o.status.success(), "{}", text(&o.stderr));

    // Rotation to a second key in the token: cross-signed by the first, through the token.
    let (cert2, uri2, key2_pem) = token.root(tmp.path(), "root2", "02", 2);
    let o = s.admin(&["ca", "--rotate", "--ca-cert", &cert2, "--ca-key", &uri2, "-d"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let _ = renew(&s, &d, true);
        let _ = renew(&s, &tmp.path().join("w2"), true);
        let o = s.admin(&["ca"]);
        if !text(&o.stderr).contains("in progress") {
            break;
        }
        assert!(Instant::now() < deadline, "the rotation never completed: {}", text(&o.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
    let root = s.admin_ok(&["ca", "-q"]);
    assert_eq!(
        root.trim(),
        std::fs::read_to_string(&cert2).unwrap().trim(),
        "the token's second key is the root"
    );
    let d3 = tmp.path().join("w3");
    let o = join(&s.addr, &s.token("worker"), &d3);
    assert!(o.status.success(), "{}", text(&o.stderr));
    openssl_verify(&d3);
    for k in [&key_pem, &key2_pem] {
        assert_no_key_under(&data, k, &["seal.key"]);
    }
    assert!(s.terminate().success());
}

#[test]
fn a_wrong_pin_or_a_missing_key_stops_the_manager_with_a_clear_message() {
    let tmp = TempDir::new("hsm-bad");
    let Some(token) = Token::new(tmp.path()) else { return };
    let (cert, _, _) = token.root(tmp.path(), "root1", "01", 1);
    let serve = |pin: &str, uri: &str| {
        std::fs::write(&token.pin_file, pin).unwrap();
        let data = tmp.path().join(format!("d{}", crate::fixture::new_id()));
        let o = Command::new(crate::cli::bin())
            .args([
                "serve",
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .args(token.args(&["--ca-cert", &cert, "--ca-key", uri]))
            .env("SOFTHSM2_CONF", &token.conf)
            .output()
            .unwrap();
        assert!(!o.status.success());
        text(&o.stderr)
    };
    let e = serve("0000", "pkcs11:token=swarmca;object=root1");
    assert!(e.contains("PIN"), "{e}");
    let e = serve("1234", "pkcs11:token=swarmca;object=nothing");
    assert!(e.contains("no EC private key labelled \"nothing\""), "{e}");
    let e = serve("1234", "pkcs11:token=elsewhere;object=root1");
    assert!(e.contains("no PKCS#11 token labelled \"elsewhere\""), "{e}");
}
