//! A real server on 127.0.0.1:0 over mTLS, built as `server().run().await`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use docket::api::convert::{envelope_to_pb, sign_event};
use docket::api::pb;
use docket::api::pb::ledger_client::LedgerClient;
use docket::cli::client::Conn;
use docket::crypto::NoteVerifier;
use docket::datadir::{DataDir, InitOptions};
use docket::event::{Body, Event, PrincipalId};
use docket::server::{Server, Transport};
use docket::service::{Config, Service};
use ed25519_dalek::SigningKey;
use tonic::transport::Channel;

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub data: DataDir,
    pub addr: std::net::SocketAddr,
    pub svc: Arc<Service>,
    /// Re-reads the TLS and access files, as SIGHUP does for `docket serve`.
    pub reloader: docket::server::Reloader,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

/// What a run of the binary printed.
#[derive(Debug)]
pub struct CliOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOut {
    /// Standard output as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", self.stdout, self.stderr))
    }
}

pub struct Builder {
    config: Config,
    access: Option<String>,
    policy: Option<String>,
}

pub fn server() -> Builder {
    Builder {
        config: Config::default(),
        access: None,
        policy: None,
    }
}

impl Builder {
    /// Replaces the data dir's access.json.
    pub fn with_access(mut self, json: &str) -> Self {
        self.access = Some(json.to_owned());
        self
    }

    pub fn with_max_payload(mut self, n: usize) -> Self {
        self.config.max_payload_bytes = n;
        self
    }

    /// The server reads time from `clock` (deadlines without waiting).
    pub fn with_clock(mut self, clock: Arc<dyn docket::service::Clock>) -> Self {
        self.config.clock = clock;
        self
    }

    /// The genesis policy.
    pub fn with_policy(mut self, text: &str) -> Self {
        self.policy = Some(text.to_owned());
        self
    }

    pub async fn run(self) -> TestServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().join("data"));
        data.init(&InitOptions {
            listen: "127.0.0.1:0".into(),
            origin: "docket.test/log".into(),
            policy: self.policy.clone(),
            ..InitOptions::default()
        })
        .unwrap();
        if let Some(json) = &self.access {
            std::fs::write(data.access_path(), json).unwrap();
        }
        let svc = data.open_service(self.config).unwrap();
        let server = Server::bind(
            "127.0.0.1:0",
            svc.clone(),
            Transport::dev_mtls(&data).unwrap(),
        )
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        let reloader = server.reloader().expect("an mTLS server has a reloader");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        TestServer {
            dir,
            data,
            addr,
            svc,
            reloader,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }
}

impl TestServer {
    pub fn conn(&self) -> Conn {
        let tls = self.data.tls();
        Conn {
            url: format!("https://127.0.0.1:{}", self.addr.port()),
            ca: tls.ca_cert,
            cert: tls.client_cert,
            key: tls.client_key,
            plaintext: false,
        }
    }

    pub async fn client(&self) -> LedgerClient<Channel> {
        self.conn().ledger().await.unwrap()
    }

    /// A client whose certificate (from the server's CA) has common name `cn`.
    pub async fn client_as(&self, cn: &str) -> LedgerClient<Channel> {
        self.conn_as(cn).ledger().await.unwrap()
    }

    /// Connection settings with a certificate for common name `cn`.
    pub fn conn_as(&self, cn: &str) -> Conn {
        let out = self.dir.path().join("clients");
        let (cert, key) = (out.join(format!("{cn}.pem")), out.join(format!("{cn}.key")));
        if !cert.exists() {
            docket::tls::issue_client_cert(&self.data.tls(), cn, &out, 30, false).unwrap();
        }
        Conn {
            cert,
            key,
            ..self.conn()
        }
    }

    pub fn admin_key(&self) -> SigningKey {
        docket::crypto::read_signing_key(&self.data.admin_key()).unwrap()
    }

    /// The log's verifier key, read from the file an auditor would be given.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier::from_vkey(
            std::fs::read_to_string(self.data.log_vkey())
                .unwrap()
                .trim(),
        )
        .unwrap()
    }

    pub async fn size(&self) -> u64 {
        let mut c = self.client().await;
        c.get_checkpoint(pb::GetCheckpointRequest {})
            .await
            .unwrap()
            .into_inner()
            .tree_size
    }

    pub async fn stop(mut self) -> (tempfile::TempDir, DataDir) {
        let _ = self.shutdown.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap();
        (self.dir, self.data)
    }

    #[allow(dead_code)]
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Runs the `docket` binary against this server (data dir, address
    /// and admin certificate set through the environment).
    pub async fn cli(&self, args: &[&str]) -> CliOut {
        self.cli_env(args, &[]).await
    }

    /// [`TestServer::cli`] with extra environment variables.
    pub async fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> CliOut {
        let env: Vec<(&str, &std::ffi::OsStr)> = env
            .iter()
            .map(|(k, v)| (*k, std::ffi::OsStr::new(*v)))
            .collect();
        self.cli_env_os(args, &env).await
    }

    /// [`Self::cli_env`] with variables that need not be UTF-8.
    pub async fn cli_env_os(&self, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> CliOut {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .env("DOCKET_DATA", &self.data.root)
            .env(
                "DOCKET_SERVER",
                format!("https://127.0.0.1:{}", self.addr.port()),
            )
            .env("DOCKET_LOG", "warn")
            .env_remove("DOCKET_KEY")
            .env_remove("DOCKET_SIGNER")
            .env_remove("GITHUB_ACTIONS")
            .env_remove("GITLAB_CI");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().await.unwrap();
        CliOut {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `docket keygen --out KEY` then `docket principal add` (signed by the
    /// admin) for `id` with that key, one role and an optional e-mail.
    pub async fn add_principal(
        &self,
        key: &std::path::Path,
        id: &str,
        kind: &str,
        role: &str,
        email: Option<&str>,
    ) {
        let key = key.display().to_string();
        self.cli_ok(&["keygen", "--out", &key]).await;
        let pubkey = format!("{key}.pub");
        let mut args = vec![
            "principal",
            "add",
            "--id",
            id,
            "--kind",
            kind,
            "--role",
            role,
            "--key-file",
            &pubkey,
        ];
        if let Some(e) = email {
            args.extend(["--email", e]);
        }
        self.cli_ok(&args).await;
    }

    /// Like [`TestServer::cli`], and the command must succeed.
    pub async fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args).await;
        assert_eq!(
            out.code,
            0,
            "docket {}: {}{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        out.stdout
    }
}

/// A well-formed artifact digest derived from `tag`.
pub fn digest(tag: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(docket::crypto::blake3_256(tag.as_bytes()))
    )
}

pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

pub fn note(event_id: &str, signer: &str) -> Event {
    Event {
        event_id: event_id.into(),
        claimed_time_nanos: now_nanos(),
        signer: PrincipalId::parse(signer).unwrap(),
        body: Body::Annotation {
            subject: "repo/app".into(),
            kind: "note".into(),
            text: format!("event {event_id}"),
            attributes: Default::default(),
        },
    }
}

/// An append of `payload` exactly as given (which need not be a valid
/// event), signed by `key`.
pub fn signed_bytes(payload: Vec<u8>, key: &SigningKey) -> pb::AppendRequest {
    let sig = docket::crypto::sign_dsse(key, docket::crypto::PAYLOAD_TYPE, &payload);
    pb::AppendRequest {
        envelope: Some(pb::Envelope {
            payload_type: docket::crypto::PAYLOAD_TYPE.into(),
            payload,
            signatures: vec![pb::Signature {
                keyid: String::new(),
                sig: sig.to_vec(),
            }],
        }),
    }
}

pub fn signed(ev: &Event, key: &SigningKey) -> pb::AppendRequest {
    pb::AppendRequest {
        envelope: Some(envelope_to_pb(&sign_event(ev, key))),
    }
}

/// Recursive MTH over leaf hashes, straight from RFC 9162, independent of the server.
pub fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
    use docket::ledger::merkle::{empty_root, node_hash};
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// The `docket` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_docket");

/// Starts `docket serve --data DATA --listen 127.0.0.1:0` and returns once it
/// prints that it is serving, with the address it printed.
pub fn spawn_serve(data: &std::path::Path) -> (std::process::Child, std::net::SocketAddr) {
    let (child, addr, _) = spawn_serve_lines(data);
    (child, addr)
}

/// [`spawn_serve`], also handing over every later line the server prints
/// on stdout.
pub fn spawn_serve_lines(
    data: &std::path::Path,
) -> (
    std::process::Child,
    std::net::SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("DOCKET_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server exited before serving").unwrap();
        if let Some(rest) = line.strip_prefix("docket serving log ") {
            let addr = rest
                .split(" on ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            break addr.parse().unwrap();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, addr, rx)
}

/// A fresh in-memory log whose genesis names `admin` (signing with `admin_key`)
/// and whose checkpoints are signed by `log_key` under `origin`.
pub fn memory_log(
    origin: &str,
    admin_key: &SigningKey,
    log_key: &SigningKey,
) -> std::sync::Arc<docket::ledger::SledStore> {
    use docket::event::{Genesis, PrincipalKind, PrincipalSpec};
    let store = std::sync::Arc::new(docket::ledger::SledStore::temporary().unwrap());
    let genesis = Event {
        event_id: "genesis".into(),
        claimed_time_nanos: now_nanos(),
        signer: PrincipalId::parse("admin").unwrap(),
        body: Body::Genesis(Genesis {
            origin: origin.into(),
            log_key: log_key.verifying_key(),
            administrators: vec![PrincipalSpec {
                id: PrincipalId::parse("admin").unwrap(),
                kind: PrincipalKind::Human,
                display_name: String::new(),
                roles: Default::default(),
                keys: vec![admin_key.verifying_key()],
                emails: Default::default(),
            }],
            policy: None,
        }),
    };
    Service::create_log(
        &store,
        docket::crypto::NoteSigner::new(origin, log_key.clone()),
        sign_event(&genesis, admin_key),
    )
    .unwrap();
    store
}

/// Copies a directory tree (a data directory, a store) as it is.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}
