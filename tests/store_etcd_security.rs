//! The etcd store over TLS (with client certificates) and with etcd's user
//! authentication, against a real etcd started for each test. Certificates
//! are made by the `openssl` command in a temporary directory.

use calico_mesos::store::{
    self, Commit, EtcdOptions, Secret, Store, StoreError, StoreOptions, Txn,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testsupport::etcd::{Etcd, ServerTls};

const TIMEOUT: Duration = Duration::from_secs(3);

fn openssl(dir: &Path, args: &[&str]) {
    let out = testsupport::run(
        Command::new("openssl").current_dir(dir).args(args),
        testsupport::COMMAND_TIMEOUT,
    )
    .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` in `dir`: `<name>.pem`, `<name>.key`.
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A certificate `<name>.pem`/`<name>.key` signed by CA `ca`.
fn leaf(dir: &Path, ca: &str, name: &str, extensions: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            "0x1234",
            "-days",
            "1",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("calico-mesos-pki-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        ca(d, "ca");
        ca(d, "other-ca");
        leaf(
            d,
            "ca",
            "server",
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        );
        leaf(
            d,
            "ca",
            "client",
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
        );
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server(&self) -> ServerTls {
        ServerTls {
            ca_file: self.path("ca.pem"),
            cert_file: self.path("server.pem"),
            key_file: self.path("server.key"),
            client_cert_auth: true,
            admin_identity: Some((self.path("client.pem"), self.path("client.key"))),
        }
    }
}

fn options(datastore: String, etcd: EtcdOptions) -> StoreOptions {
    StoreOptions {
        datastore,
        timeout: TIMEOUT,
        etcd,
    }
}

/// Open and make one write and one read: what the plugin does first.
fn use_store(options: &StoreOptions) -> Result<(), StoreError> {
    let store = store::open(options)?;
    let mut txn = Txn::default();
    txn.put("probe", b"1".to_vec());
    assert!(matches!(store.commit(&txn)?, Commit::Done(_)));
    assert_eq!(store.get("probe")?.unwrap().value, b"1");
    Ok(())
}

/// A failure must come within the timeout (plus the hand-over slack).
fn fails_promptly(options: &StoreOptions) -> StoreError {
    let started = Instant::now();
    let err = use_store(options).expect_err("should fail");
    assert!(
        started.elapsed() < TIMEOUT * 2 + Duration::from_secs(1),
        "took {:?}: {err}",
        started.elapsed()
    );
    err
}

#[test]
fn tls_with_client_certificates() {
    let pki = Pki::new();
    let etcd = Etcd::builder().tls(pki.server()).start();
    let url = format!("etcds://{}", etcd.host_port());
    let good = EtcdOptions {
        ca_cert_file: Some(pki.path("ca.pem")),
        cert_file: Some(pki.path("client.pem")),
        key_file: Some(pki.path("client.key")),
        prefix: testsupport::etcd::unique_prefix("tls"),
        ..Default::default()
    };
    use_store(&options(url.clone(), good.clone()))
        .expect("TLS with the right CA and a client certificate");

    // A CA that did not sign the server: a clear, prompt failure.
    let wrong_ca = EtcdOptions {
        ca_cert_file: Some(pki.path("other-ca.pem")),
        ..good.clone()
    };
    match fails_promptly(&options(url.clone(), wrong_ca)) {
        StoreError::Unavailable {
            reason, location, ..
        } => {
            assert!(reason.to_lowercase().contains("certificate"), "{reason}");
            assert_eq!(location, etcd.endpoint());
        }
        other => panic!("wrong CA: {other}"),
    }

    // No client certificate while etcd requires one.
    let anonymous = EtcdOptions {
        cert_file: None,
        key_file: None,
        ..good.clone()
    };
    assert!(matches!(
        fails_promptly(&options(url.clone(), anonymous)),
        StoreError::Unavailable { .. }
    ));

    // Settings that cannot work are refused up front, naming the key.
    let cases = [
        (
            EtcdOptions {
                ca_cert_file: None,
                ..good.clone()
            },
            "etcd_ca_cert_file",
        ),
        (
            EtcdOptions {
                ca_cert_file: Some(pki.path("missing.pem")),
                ..good.clone()
            },
            "etcd_ca_cert_file",
        ),
        (
            EtcdOptions {
                key_file: None,
                ..good.clone()
            },
            "etcd_key_file",
        ),
        (
            EtcdOptions {
                cert_file: Some(pki.path("nope.pem")),
                ..good.clone()
            },
            "etcd_cert_file",
        ),
    ];
    for (etcd_options, key) in cases {
        let err = use_store(&options(url.clone(), etcd_options)).unwrap_err();
        assert!(
            matches!(&err, StoreError::BadConfig { key: k, .. } if *k == key),
            "{key}: {err}"
        );
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn user_and_password() {
    let etcd = Etcd::start();
    let prefix = testsupport::etcd::unique_prefix("auth");
    etcd.enable_auth("root-secret", "calico", "calico-secret", &prefix);
    let url = format!("etcd://{}", etcd.host_port());
    let user = EtcdOptions {
        username: Some("calico".into()),
        password: Some(Secret("calico-secret".into())),
        prefix: prefix.clone(),
        ..Default::default()
    };
    use_store(&options(url.clone(), user.clone())).expect("the user works in its prefix");

    let no_user = EtcdOptions {
        username: None,
        password: None,
        ..user.clone()
    };
    let err = fails_promptly(&options(url.clone(), no_user));
    assert!(matches!(err, StoreError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("etcd_username"), "{err}");

    let wrong = EtcdOptions {
        password: Some(Secret("guess".into())),
        ..user.clone()
    };
    let err = fails_promptly(&options(url.clone(), wrong));
    assert!(matches!(err, StoreError::Refused { .. }), "{err}");
    assert!(
        !err.to_string().contains("guess"),
        "never print the password"
    );

    // Outside its prefix the user has no rights.
    let elsewhere = EtcdOptions {
        prefix: "/not-ours/".into(),
        ..user
    };
    let err = fails_promptly(&options(url, elsewhere));
    assert!(matches!(err, StoreError::Refused { .. }), "{err}");
}
