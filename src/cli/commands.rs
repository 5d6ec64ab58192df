//! Subcommand implementations.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use ed25519_dalek::SigningKey;

use super::client::{Conn, status_err};
use super::{CliError, CliResult, ConnArgs, DataArgs, SignArgs};
use crate::api::convert::{envelope_to_pb, sign_event};
use crate::api::pb;
use crate::crypto::{self, NoteVerifier};
use crate::datadir::{DataDir, InitOptions};
use crate::event::{Body, Event, PrincipalId, PrincipalKind, PrincipalSpec};
use crate::ledger::{Checkpoint, Entry, Hash, Store, merkle};
use crate::server::{Server, Transport};
use crate::service::{self, Config as ServiceConfig};
use crate::state::State;

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Log origin: the first line of every checkpoint.
    #[arg(long, default_value = "docket.local/log")]
    origin: String,
    /// Address the server listens on.
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: String,
    /// Principal id of the first administrator.
    #[arg(long, default_value = "admin")]
    admin: String,
    /// A further human administrator named by genesis, as ID=PUBLIC_KEY_FILE
    /// (from `docket keygen`); repeatable. With one, an identity change
    /// either administrator signs about someone else waits for the other.
    #[arg(long = "co-admin", value_name = "ID=PUBLIC_KEY_FILE")]
    co_admins: Vec<String>,
    /// Extra DNS names or IP addresses for the server certificate.
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// The policy in force from genesis (TOML, docs/policy.md); default: the
    /// built-in policy that authorizes nothing until a policy change says how.
    #[arg(long)]
    policy: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Listen address; overrides the data dir config.
    #[arg(long, env = "DOCKET_LISTEN")]
    listen: Option<String>,
    /// Largest accepted event payload in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_payload_bytes: usize,
    /// Largest allowed clock skew of claimed times into the future, seconds.
    #[arg(long, default_value_t = 300)]
    max_clock_skew_secs: u64,
    /// Oldest accepted claimed time, seconds in the past.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    max_event_age_secs: u64,
    /// Serve without TLS or client certificates. Never in production.
    #[arg(long)]
    dangerous_plaintext: bool,
    /// Write the bound address to this file once listening (for scripts and tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

pub(crate) fn init(a: InitArgs) -> CliResult {
    let dd = DataDir::new(&a.data.data);
    let policy = match &a.policy {
        Some(p) => Some(super::read_small_file(
            "--policy",
            p,
            crate::policy::MAX_POLICY_BYTES,
        )?),
        None => None,
    };
    let co_admins = a
        .co_admins
        .iter()
        .map(|spec| {
            let (id, file) = spec.split_once('=').ok_or_else(|| {
                CliError::usage(format!(
                    "--co-admin {spec:?}: expected ID=PUBLIC_KEY_FILE, for example bob=bob.key.pub"
                ))
            })?;
            let key = crypto::read_public_key(std::path::Path::new(file))
                .map_err(|e| CliError::usage(format!("--co-admin {id}: {e}")))?;
            Ok((id.to_owned(), key))
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let mut opts = InitOptions {
        origin: a.origin,
        listen: a.listen,
        admin: a.admin,
        policy,
        co_admins,
        ..InitOptions::default()
    };
    opts.hosts.extend(a.hosts);
    dd.init(&opts).map_err(CliError::usage)?;
    print_init_summary(&dd);
    Ok(())
}

fn print_init_summary(dd: &DataDir) {
    let tls = dd.tls();
    outln!("Created Docket data directory {}", dd.root.display());
    outln!(
        "  log signing key     {}  (never leaves the server)",
        dd.log_key().display()
    );
    outln!(
        "  log verifier key    {}  (give this to auditors)",
        dd.log_vkey().display()
    );
    outln!(
        "  admin key           {}  (+ {})",
        dd.admin_key().display(),
        dd.admin_pub().display()
    );
    outln!("  development CA      {}", tls.ca_cert.display());
    outln!("  server certificate  {}", tls.server_cert.display());
    outln!(
        "  client certificate  {}  (key {})",
        tls.client_cert.display(),
        tls.client_key.display()
    );
    outln!(
        "  access rules        {}  (which client certificates may call what)",
        dd.access_path().display()
    );
    outln!("  database            {}", dd.db().display());
}

pub(crate) async fn serve(a: ServeArgs) -> CliResult {
    // Installed before anything else: SIGHUP's default action would end
    // the process without a drain.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| CliError::failed(format!("installing a SIGHUP handler: {e}")))?;
    let dd = DataDir::new(&a.data.data);
    if !dd.is_initialised() {
        dd.init(&InitOptions::default()).map_err(CliError::usage)?;
        print_init_summary(&dd);
    }
    let cfg = dd.config().map_err(CliError::usage)?;
    // Limits that would refuse every event, or overflow the nanosecond
    // arithmetic they feed (i64 nanoseconds: about 292 years).
    const MAX_SECS: u64 = 100 * 365 * 24 * 3600;
    for (flag, v) in [
        ("--max-clock-skew-secs", a.max_clock_skew_secs),
        ("--max-event-age-secs", a.max_event_age_secs),
    ] {
        if !(1..=MAX_SECS).contains(&v) {
            return Err(CliError::usage(format!(
                "{flag} {v}: must be between 1 and {MAX_SECS} (100 years)"
            )));
        }
    }
    // The Ledger service decodes requests of up to 8 MiB; a payload limit
    // above half of that could not be reached with its envelope.
    if !(1024..=4 << 20).contains(&a.max_payload_bytes) {
        return Err(CliError::usage(format!(
            "--max-payload-bytes {}: must be between 1024 and {} (4 MiB)",
            a.max_payload_bytes,
            4 << 20
        )));
    }
    let svc = dd
        .open_service(ServiceConfig {
            max_payload_bytes: a.max_payload_bytes,
            max_clock_skew: Duration::from_secs(a.max_clock_skew_secs),
            max_event_age: Duration::from_secs(a.max_event_age_secs),
            ..ServiceConfig::default()
        })
        .map_err(CliError::failed)?;
    let transport = if a.dangerous_plaintext {
        Transport::DangerousPlaintext
    } else {
        Transport::dev_mtls(&dd).map_err(CliError::usage)?
    };
    let listen = a.listen.unwrap_or(cfg.listen);
    let server = Server::bind(&listen, svc.clone(), transport)
        .await
        .map_err(CliError::usage)?;
    let addr = server.local_addr().map_err(CliError::failed)?;
    let cp = svc.latest_checkpoint();
    outln!(
        "docket serving log {:?} ({} entries) on {} {}",
        cfg.origin,
        cp.size,
        addr,
        if a.dangerous_plaintext {
            "WITHOUT TLS (dangerous)"
        } else {
            "over mTLS (TLS 1.3, client certificates required)"
        }
    );
    outln!(
        "pid {}: SIGTERM drains and stops, SIGHUP reloads access.json and client certificate revocations",
        std::process::id()
    );
    outln!(
        "try:  docket --help;  docket checkpoint --data {}",
        dd.root.display()
    );
    if let Some(f) = &a.ready_file {
        std::fs::write(f, addr.to_string())
            .map_err(|e| CliError::failed(format!("{}: {e}", f.display())))?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| CliError::failed(format!("installing a SIGTERM handler: {e}")))?;
    let reloader = server.reloader();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(reloader) = &reloader else {
                tracing::warn!(
                    "SIGHUP: a server without TLS has no access rules or certificates to reload"
                );
                continue;
            };
            match reloader.reload() {
                Ok(r) => {
                    tracing::info!(
                        identities = r.identities,
                        revoked_certificates = r.revoked,
                        "SIGHUP: reloaded access.json, the CRL and the server certificate"
                    );
                    outln!(
                        "reloaded: access.json lists {} identities; {} client certificates revoked",
                        r.identities,
                        r.revoked
                    );
                }
                Err(e) => tracing::error!(
                    cause = %e,
                    "SIGHUP: reload failed; the previous TLS and access settings stay in force"
                ),
            }
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = server.run(async {
        let _ = stop_rx.await;
    });
    tokio::pin!(run);
    // The writer stops only after a storage failure or a bug; a server that
    // can neither append nor give durable answers exits, so a supervisor's
    // restart recovers the durable prefix instead of every caller waiting.
    let mut failed = false;
    tokio::select! {
        r = &mut run => return r.map_err(CliError::failed),
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        _ = svc.stopped() => failed = true,
    }
    if failed {
        tracing::error!("the writer stopped (see the error above); draining and exiting");
    } else {
        tracing::info!("shutdown signal received; draining");
    }
    let _ = stop_tx.send(());
    // Every acknowledged append is already durable, so a client that holds a
    // stream open past the deadline only loses its stream.
    match tokio::time::timeout(DRAIN_DEADLINE, run).await {
        Ok(r) => r.map_err(CliError::failed)?,
        Err(_) => tracing::warn!(
            deadline_secs = DRAIN_DEADLINE.as_secs(),
            "drain deadline passed with calls still open; exiting"
        ),
    }
    if failed {
        return Err(CliError::failed(
            "stopped: the log's writer stopped after a storage failure or a bug (see the log \
             above); nothing unacknowledged was kept; restart to recover the durable prefix",
        ));
    }
    Ok(())
}

/// How long `serve` waits for in-flight calls after a shutdown signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Private key file to create (PKCS#8 PEM, mode 0600); the public key goes to FILE.pub.
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn keygen(a: KeygenArgs) -> CliResult {
    let key = crypto::generate_signing_key();
    crypto::write_signing_key(&a.out, &key).map_err(CliError::usage)?;
    let pubp = pub_path(&a.out);
    crypto::write_public_key(&pubp, &key.verifying_key()).map_err(CliError::usage)?;
    outln!(
        "wrote {} and {} (keyid {})",
        a.out.display(),
        pubp.display(),
        crypto::KeyId::of(&key.verifying_key())
    );
    Ok(())
}

fn pub_path(p: &std::path::Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Issue a client certificate (CN=NAME) signed by the data dir's CA.
    Issue {
        #[command(flatten)]
        data: DataArgs,
        /// Common name; the transport identity becomes `CN=<name>`.
        #[arg(long)]
        cn: String,
        /// Where to write <cn>.pem and <cn>.key (default: <data>/tls/clients).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Days the certificate is valid (1 to 3650, and not past the CA).
        #[arg(long, default_value_t = crate::tls::pki::DEFAULT_DAYS)]
        days: u32,
        /// Renew: overwrite an existing <cn>.pem/<cn>.key and revoke the
        /// certificate it held (reason "superseded").
        #[arg(long)]
        replace: bool,
        /// Also allow this identity these methods in access.json (repeatable;
        /// `*` for all). Takes effect when the server reloads (SIGHUP) or restarts.
        #[arg(long = "allow")]
        allow: Vec<String>,
    },
    /// Revoke a client certificate issued by the data dir's CA: it is added
    /// to tls/revoked.json and tls/crl.pem. Takes effect when the server
    /// reloads (SIGHUP) or restarts, for connections already open too.
    Revoke {
        #[command(flatten)]
        data: DataArgs,
        /// The certificate to revoke (PEM), e.g. <data>/tls/clients/ci.pem.
        #[arg(long)]
        cert: PathBuf,
        /// unspecified, key-compromise, affiliation-changed, superseded,
        /// cessation-of-operation or privilege-withdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Renew the server's certificate and key (tls/server.pem, server.key)
    /// from the data dir's CA. The server uses them once it reloads (SIGHUP)
    /// or restarts.
    RenewServer {
        #[command(flatten)]
        data: DataArgs,
        /// Days the certificate is valid (1 to 3650, and not past the CA).
        #[arg(long, default_value_t = crate::tls::pki::SERVER_DAYS)]
        days: u32,
        /// DNS name or IP address clients connect to (repeatable; default:
        /// those of the current certificate).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Renew the admin's client certificate that `init` made
    /// (tls/client.pem, client.key): same name, and the certificate it
    /// replaces revoked as superseded.
    RenewAdmin {
        #[command(flatten)]
        data: DataArgs,
        /// Days the certificate is valid (1 to 3650, and not past the CA).
        #[arg(long, default_value_t = crate::tls::pki::DEFAULT_DAYS)]
        days: u32,
    },
    /// List the client certificates in a directory (default
    /// <data>/tls/clients) with serial, validity and revocation.
    List {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

pub(crate) fn cert(c: CertCmd) -> CliResult {
    match c {
        CertCmd::Issue {
            data,
            cn,
            out_dir,
            days,
            replace,
            allow,
        } => cert_issue(&data, &cn, out_dir, days, replace, &allow),
        CertCmd::Revoke { data, cert, reason } => {
            let dd = require_initialised(&data)?;
            match crate::tls::pki::revoke(&dd.tls(), &cert, &reason).map_err(CliError::usage)? {
                Some(r) => outln!(
                    "revoked {} (serial {}, reason {}) in {}; reload the server (SIGHUP) or restart it to apply",
                    r.subject,
                    r.serial,
                    r.reason,
                    dd.tls().crl.display()
                ),
                None => outln!("{} was already revoked; nothing changed", cert.display()),
            }
            Ok(())
        }
        CertCmd::RenewServer { data, days, hosts } => {
            let dd = require_initialised(&data)?;
            let r = crate::tls::pki::renew_server_cert(&dd.tls(), &hosts, days)
                .map_err(CliError::usage)?;
            let fmt = crate::tls::pki::fmt_secs;
            outln!(
                "renewed the server certificate {}: serial {}, valid until {}, for {}",
                dd.tls().server_cert.display(),
                r.info.serial,
                fmt(r.info.not_after),
                r.hosts.join(", ")
            );
            outln!(
                "it replaces serial {} (valid until {}); a running server uses the new one after \
                 SIGHUP (kill -HUP <pid>) or a restart",
                r.previous.serial,
                fmt(r.previous.not_after)
            );
            Ok(())
        }
        CertCmd::RenewAdmin { data, days } => {
            let dd = require_initialised(&data)?;
            let r = crate::tls::pki::renew_admin_cert(&dd.tls(), days).map_err(CliError::usage)?;
            let fmt = crate::tls::pki::fmt_secs;
            outln!(
                "renewed {} ({}): serial {}, valid until {}",
                r.cert.display(),
                r.info.subject,
                r.info.serial,
                fmt(r.info.not_after)
            );
            if let Some(old) = r.replaced {
                outln!(
                    "revoked serial {} (superseded); a running server refuses it after SIGHUP \
                     (kill -HUP <pid>) or a restart",
                    old.info.serial
                );
            }
            Ok(())
        }
        CertCmd::List { data, dir } => {
            let dd = require_initialised(&data)?;
            let dir = dir.unwrap_or_else(|| dd.root.join("tls").join("clients"));
            let now = jiff::Timestamp::now().as_second();
            let fmt = crate::tls::pki::fmt_secs;
            let listed = crate::tls::pki::list(&dd.tls(), &dir).map_err(CliError::usage)?;
            if listed.is_empty() {
                outln!("no client certificates in {}", dir.display());
            }
            for l in listed {
                let status = match &l.revoked {
                    Some(r) => format!("REVOKED {} ({})", r.revoked_at, r.reason),
                    None if l.info.not_after < now => "EXPIRED".to_owned(),
                    None => "valid".to_owned(),
                };
                outln!(
                    "{:<24} serial {} until {} {status}  {}",
                    l.info.subject,
                    l.info.serial,
                    fmt(l.info.not_after),
                    l.path.display()
                );
            }
            Ok(())
        }
    }
}

fn require_initialised(data: &DataArgs) -> Result<DataDir, CliError> {
    let dd = DataDir::new(&data.data);
    super::require_data_dir(&dd)?;
    Ok(dd)
}

fn cert_issue(
    data: &DataArgs,
    cn: &str,
    out_dir: Option<PathBuf>,
    days: u32,
    replace: bool,
    allow: &[String],
) -> CliResult {
    let dd = DataDir::new(&data.data);
    let out = out_dir.unwrap_or_else(|| dd.root.join("tls").join("clients"));
    let identity = format!("CN={cn}");
    // Validate the grant before anything is written.
    let mut access = dd.access().map_err(CliError::usage)?;
    if !allow.is_empty() {
        access.grant(&identity, allow).map_err(CliError::usage)?;
    }
    let issued = crate::tls::issue_client_cert(&dd.tls(), cn, &out, days, replace)
        .map_err(CliError::usage)?;
    match &issued.replaced {
        Some(old) if old.newly => outln!(
            "revoked the certificate it replaces (serial {}, reason superseded)",
            old.info.serial
        ),
        Some(old) => outln!(
            "the certificate it replaces (serial {}) was revoked already",
            old.info.serial
        ),
        None => {}
    }
    outln!(
        "issued {} (key {}) for transport identity {identity:?}, serial {}, valid until {}",
        issued.cert.display(),
        issued.key.display(),
        issued.info.serial,
        crate::tls::pki::fmt_secs(issued.info.not_after)
    );
    if allow.is_empty() {
        if !access.lists(&identity) {
            outln!(
                "it may call nothing until access.json lists it (or re-run with --allow METHOD)"
            );
        }
    } else {
        let p = dd.access_path();
        crate::tls::pki::replace_file(&p, &access.to_json(), false)
            .map_err(|e| CliError::failed(e.to_string()))?;
        outln!(
            "updated {}; reload the server (SIGHUP) or restart it to apply",
            p.display()
        );
    }
    if issued.replaced.as_ref().is_some_and(|r| r.newly) {
        outln!("reload the server (SIGHUP) or restart it to refuse the replaced certificate");
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum PrincipalCmd {
    /// Register a principal (signed by an admin).
    Add {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        sign: SignArgs,
        #[arg(long)]
        id: String,
        /// human, service, ci or cluster.
        #[arg(long, default_value = "human")]
        kind: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long = "role")]
        roles: Vec<String>,
        /// E-mail addresses that identify this principal as a git author or committer.
        #[arg(long = "email")]
        emails: Vec<String>,
        /// Public key files (SPKI PEM or 64 hex digits).
        #[arg(long = "key-file", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        event_id: Option<String>,
    },
    /// Add a new key to a principal, optionally revoking an old one.
    RotateKey {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        sign: SignArgs,
        #[arg(long)]
        id: String,
        #[arg(long)]
        new_key: PathBuf,
        #[arg(long)]
        old_key: Option<PathBuf>,
        #[arg(long)]
        event_id: Option<String>,
    },
    /// Revoke a key: nothing appended afterwards may be signed by it.
    RevokeKey {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        sign: SignArgs,
        #[arg(long)]
        id: String,
        #[arg(long)]
        key_file: PathBuf,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        event_id: Option<String>,
    },
    /// Grant or revoke roles (needs `change_roles`; not your own) and add or
    /// remove git e-mails (needs `register_principals`).
    Update {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        sign: SignArgs,
        #[arg(long)]
        id: String,
        #[arg(long = "grant-role")]
        grant_roles: Vec<String>,
        #[arg(long = "revoke-role")]
        revoke_roles: Vec<String>,
        #[arg(long = "add-email")]
        add_emails: Vec<String>,
        #[arg(long = "remove-email")]
        remove_emails: Vec<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Approve an identity change another identity administrator signed,
    /// which waits for a second one (`docket principal pending` lists them).
    Approve {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        sign: SignArgs,
        /// Index of the entry that recorded the identity change.
        entry: u64,
        #[arg(long)]
        event_id: Option<String>,
    },
    /// Withdraw an identity change you recorded that still waits for a
    /// second identity administrator, so that no approval can apply it.
    Withdraw {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        sign: SignArgs,
        /// Index of the entry that recorded the identity change.
        entry: u64,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        event_id: Option<String>,
    },
    /// List identity changes waiting for a second identity administrator
    /// (and, with --all, those already approved or withdrawn).
    Pending {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show a principal's roles and key history.
    Show {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        id: String,
    },
}

pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(1)
}

pub(crate) fn fresh_event_id(prefix: &str) -> String {
    let mut r = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut r);
    format!("{prefix}-{}-{}", now_nanos(), hex::encode(r))
}

pub(crate) fn signer_of(
    conn: &ConnArgs,
    s: &SignArgs,
) -> Result<(PrincipalId, SigningKey), CliError> {
    let dd = DataDir::new(&conn.data.data);
    let key_path = s.key.clone().unwrap_or_else(|| dd.admin_key());
    let key = crypto::read_signing_key(&key_path).map_err(CliError::usage)?;
    let id = match &s.signer {
        Some(id) => id.clone(),
        None => dd
            .config()
            .map(|c| c.admin)
            .unwrap_or_else(|_| "admin".into()),
    };
    let id = PrincipalId::parse(&id).map_err(CliError::usage)?;
    Ok((id, key))
}

fn read_pub(p: &std::path::Path) -> Result<ed25519_dalek::VerifyingKey, CliError> {
    crypto::read_public_key(p).map_err(CliError::usage)
}

async fn submit(conn: &ConnArgs, key: &SigningKey, ev: Event) -> CliResult {
    submit_printed(conn, key, ev).await.map(drop)
}

/// Appends `ev` and prints its receipt as JSON; returns the receipt.
async fn submit_printed(
    conn: &ConnArgs,
    key: &SigningKey,
    ev: Event,
) -> Result<pb::Receipt, CliError> {
    let (r, _) = submit_verified(conn, key, ev).await?;
    outln!("{}", super::text::json_pretty(&receipt_json(&r)));
    Ok(r)
}

/// The identity changes that waited for a second identity administrator,
/// applied or not, in entry order.
async fn identity_changes(conn: &ConnArgs) -> Result<Vec<pb::PendingIdentityChange>, CliError> {
    let mut client = Conn::resolve(conn)?.ledger().await?;
    Ok(client
        .list_principals(pb::ListPrincipalsRequest {})
        .await
        .map_err(|s| status_err("list principals", s))?
        .into_inner()
        .identity_changes)
}

/// Like [`submit`], for an identity change: says on stderr when the change
/// waits for a second identity administrator instead of taking effect.
async fn submit_identity(conn: &ConnArgs, key: &SigningKey, ev: Event) -> CliResult {
    let r = submit_printed(conn, key, ev).await?;
    // The change is recorded whatever happens next: asking whether it waits
    // is best-effort, so a failure here must not read as a failed append
    // (and invite a retry that records it twice).
    let waits = identity_changes(conn).await.map(|all| {
        all.iter()
            .any(|c| c.entry_index == r.index && !c.applied && !c.withdrawn)
    });
    match waits {
        Ok(true) => eprintln!(
            "recorded at entry {i}, not yet in effect: another identity administrator must \
             approve it with `docket principal approve {i}`",
            i = r.index
        ),
        Ok(false) => {}
        Err(e) => eprintln!(
            "recorded at entry {i}; could not ask whether it waits for a second identity \
             administrator ({m}); `docket principal pending` lists what waits",
            i = r.index,
            m = e.message
        ),
    }
    Ok(())
}

/// Signs and appends `ev`, checks the receipt offline against the data
/// dir's log key, and returns it with the raw status on refusal.
pub(crate) async fn submit_verified(
    conn: &ConnArgs,
    key: &SigningKey,
    ev: Event,
) -> Result<(pb::Receipt, crate::ledger::Envelope), CliError> {
    // Read the verifier key before appending anything: a receipt that cannot
    // be checked must not follow an append that already happened.
    let verifier = log_verifier(conn)?;
    let env = sign_event(&ev, key);
    let c = Conn::resolve(conn)?;
    let mut client = c.ledger().await?;
    let r = client
        .append(pb::AppendRequest {
            envelope: Some(envelope_to_pb(&env)),
        })
        .await
        .map_err(|s| status_err("append", s))?
        .into_inner();
    check_receipt_with(&verifier, &r, &env)?;
    Ok((r, env))
}

/// The log's verifier key: `--log-vkey`, else `<data>/log.vkey`.
pub(crate) fn log_verifier(conn: &ConnArgs) -> Result<NoteVerifier, CliError> {
    let p = conn
        .log_vkey
        .clone()
        .unwrap_or_else(|| DataDir::new(&conn.data.data).log_vkey());
    let text = crate::files::read_bounded_text(&p, 64 << 10).map_err(|e| {
        CliError::usage(format!(
            "{}: {e} (pass --log-vkey FILE, or --data pointing at the log's data dir)",
            p.display()
        ))
    })?;
    NoteVerifier::from_vkey(text.trim())
        .map_err(|e| CliError::usage(format!("{}: {e}", p.display())))
}

fn hashes(v: &[Vec<u8>]) -> Result<Vec<Hash>, CliError> {
    v.iter()
        .map(|h| {
            h.as_slice()
                .try_into()
                .map_err(|_| CliError::failed("server sent a proof hash that is not 32 bytes"))
        })
        .collect()
}

/// Verifies a receipt offline and that it carries the envelope sent.
pub(crate) fn check_receipt_with(
    verifier: &NoteVerifier,
    r: &pb::Receipt,
    sent: &crate::ledger::Envelope,
) -> CliResult {
    let proof = r.inclusion_proof.clone().unwrap_or_default();
    let cp = r.checkpoint.clone().unwrap_or_default();
    let leaf: Hash = r
        .leaf_hash
        .as_slice()
        .try_into()
        .map_err(|_| CliError::failed("receipt leaf hash is not 32 bytes"))?;
    crate::verify::verify_receipt(
        &r.entry,
        r.index,
        &leaf,
        &hashes(&proof.hashes)?,
        &cp.note,
        verifier,
    )
    .map_err(|e| CliError::failed(format!("the server's receipt does not verify: {e}")))?;
    // The proof must be for the envelope we sent, not just some entry.
    let entry = Entry::decode(&r.entry).map_err(CliError::failed)?;
    if &entry.envelope != sent {
        return Err(CliError::failed(
            "the receipt's entry does not carry the envelope that was sent",
        ));
    }
    Ok(())
}

/// A verified receipt as JSON.
pub(crate) fn receipt_json(r: &pb::Receipt) -> serde_json::Value {
    let proof = r.inclusion_proof.clone().unwrap_or_default();
    let cp = r.checkpoint.clone().unwrap_or_default();
    serde_json::json!({
        "index": r.index,
        "duplicate": r.duplicate,
        "leaf_hash": hex::encode(&r.leaf_hash),
        "entry": hex::encode(&r.entry),
        "inclusion_proof": {
            "tree_size": proof.tree_size,
            "hashes": proof.hashes.iter().map(hex::encode).collect::<Vec<_>>(),
        },
        "checkpoint": cp.note,
        "verified_offline": true,
    })
}

pub(crate) async fn principal(c: PrincipalCmd) -> CliResult {
    match c {
        PrincipalCmd::Add {
            conn,
            sign,
            id,
            kind,
            name,
            roles,
            emails,
            keys,
            event_id,
        } => {
            let (signer, key) = signer_of(&conn, &sign)?;
            let kind = PrincipalKind::from_name(&kind).ok_or_else(|| {
                CliError::usage(format!(
                    "--kind {kind:?}: expected human, service, ci or cluster"
                ))
            })?;
            let spec = PrincipalSpec {
                id: PrincipalId::parse(&id).map_err(CliError::usage)?,
                kind,
                display_name: name,
                roles: roles.into_iter().collect(),
                keys: keys.iter().map(|p| read_pub(p)).collect::<Result<_, _>>()?,
                emails: emails.iter().map(|e| e.to_lowercase()).collect(),
            };
            let ev = Event {
                event_id: event_id.unwrap_or_else(|| fresh_event_id("principal-add")),
                claimed_time_nanos: now_nanos(),
                signer,
                body: Body::PrincipalRegistered(spec),
            };
            submit_identity(&conn, &key, ev).await
        }
        PrincipalCmd::RotateKey {
            conn,
            sign,
            id,
            new_key,
            old_key,
            event_id,
        } => {
            let (signer, key) = signer_of(&conn, &sign)?;
            let ev = Event {
                event_id: event_id.unwrap_or_else(|| fresh_event_id("rotate-key")),
                claimed_time_nanos: now_nanos(),
                signer,
                body: Body::KeyRotated {
                    principal: PrincipalId::parse(&id).map_err(CliError::usage)?,
                    new_key: read_pub(&new_key)?,
                    old_key: old_key.as_deref().map(read_pub).transpose()?,
                },
            };
            submit_identity(&conn, &key, ev).await
        }
        PrincipalCmd::RevokeKey {
            conn,
            sign,
            id,
            key_file,
            reason,
            event_id,
        } => {
            let (signer, key) = signer_of(&conn, &sign)?;
            let ev = Event {
                event_id: event_id.unwrap_or_else(|| fresh_event_id("revoke-key")),
                claimed_time_nanos: now_nanos(),
                signer,
                body: Body::KeyRevoked {
                    principal: PrincipalId::parse(&id).map_err(CliError::usage)?,
                    key: read_pub(&key_file)?,
                    reason,
                },
            };
            submit_identity(&conn, &key, ev).await
        }
        PrincipalCmd::Update {
            conn,
            sign,
            id,
            grant_roles,
            revoke_roles,
            add_emails,
            remove_emails,
            reason,
        } => {
            let (signer, key) = signer_of(&conn, &sign)?;
            let lower = |v: Vec<String>| v.iter().map(|e| e.to_lowercase()).collect();
            let ev = Event {
                event_id: fresh_event_id("principal-update"),
                claimed_time_nanos: now_nanos(),
                signer,
                body: Body::PrincipalUpdated(crate::event::PrincipalUpdate {
                    principal: PrincipalId::parse(&id).map_err(CliError::usage)?,
                    grant_roles: grant_roles.into_iter().collect(),
                    revoke_roles: revoke_roles.into_iter().collect(),
                    add_emails: lower(add_emails),
                    remove_emails: lower(remove_emails),
                    reason,
                }),
            };
            submit_identity(&conn, &key, ev).await
        }
        PrincipalCmd::Approve {
            conn,
            sign,
            entry,
            event_id,
        } => {
            let (signer, key) = signer_of(&conn, &sign)?;
            let ev = Event {
                event_id: event_id.unwrap_or_else(|| fresh_event_id("identity-approve")),
                claimed_time_nanos: now_nanos(),
                signer,
                body: Body::IdentityChangeApproved { entry },
            };
            submit(&conn, &key, ev).await?;
            eprintln!("the identity change recorded at entry {entry} has taken effect");
            Ok(())
        }
        PrincipalCmd::Withdraw {
            conn,
            sign,
            entry,
            reason,
            event_id,
        } => {
            let (signer, key) = signer_of(&conn, &sign)?;
            let ev = Event {
                event_id: event_id.unwrap_or_else(|| fresh_event_id("identity-withdraw")),
                claimed_time_nanos: now_nanos(),
                signer,
                body: Body::IdentityChangeWithdrawn { entry, reason },
            };
            submit(&conn, &key, ev).await?;
            eprintln!(
                "the identity change recorded at entry {entry} is withdrawn: no approval can apply it"
            );
            Ok(())
        }
        PrincipalCmd::Pending { conn, all, json } => {
            let changes = identity_changes(&conn).await?;
            let shown: Vec<&pb::PendingIdentityChange> = changes
                .iter()
                .filter(|c| all || !(c.applied || c.withdrawn || c.expired))
                .collect();
            if json {
                let out: Vec<serde_json::Value> = shown
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "entry_index": c.entry_index,
                            "proposer": c.proposer,
                            "subject": c.subject,
                            "description": c.description,
                            "applied": c.applied,
                            "applied_at_index": c.applied.then_some(c.applied_at_index),
                            "approved_by": c.applied.then_some(&c.approved_by),
                            "withdrawn": c.withdrawn,
                            "withdrawn_at_index": c.withdrawn.then_some(c.withdrawn_at_index),
                            "withdrawn_by": c.withdrawn.then_some(&c.withdrawn_by),
                            "expires_at": (c.expires_at_unix_nanos != 0)
                                .then(|| crate::state::gov::fmt_nanos(c.expires_at_unix_nanos)),
                            "expired": c.expired,
                        })
                    })
                    .collect();
                outln!("{}", super::text::json_pretty(&out));
            } else if shown.is_empty() {
                outln!(
                    "{}",
                    if all {
                        "no identity change has waited for approval"
                    } else {
                        "no identity change waits for approval"
                    }
                );
            } else {
                for c in shown {
                    let status = if c.applied {
                        format!(
                            "took effect at entry {}, approved by {}",
                            c.applied_at_index, c.approved_by
                        )
                    } else if c.withdrawn {
                        format!(
                            "withdrawn at entry {} by {}",
                            c.withdrawn_at_index, c.withdrawn_by
                        )
                    } else if c.expired {
                        format!(
                            "expired at {}",
                            crate::state::gov::fmt_nanos(c.expires_at_unix_nanos)
                        )
                    } else if c.expires_at_unix_nanos != 0 {
                        format!(
                            "waiting until {}: docket principal approve {}",
                            crate::state::gov::fmt_nanos(c.expires_at_unix_nanos),
                            c.entry_index
                        )
                    } else {
                        format!("waiting: docket principal approve {}", c.entry_index)
                    };
                    outln!(
                        "entry {}  {}  (signed by {})  {}",
                        c.entry_index,
                        c.description,
                        c.proposer,
                        status
                    );
                }
            }
            Ok(())
        }
        PrincipalCmd::Show { conn, id } => {
            let mut client = Conn::resolve(&conn)?.ledger().await?;
            let p = client
                .get_principal(pb::GetPrincipalRequest { id })
                .await
                .map_err(|s| status_err("get principal", s))?
                .into_inner();
            let out = serde_json::json!({
                "id": p.id,
                "kind": pb::PrincipalKind::try_from(p.kind).map(|k| k.as_str_name()).unwrap_or("?"),
                "display_name": p.display_name,
                "roles": p.roles,
                "emails": p.emails,
                "registered_at_index": p.registered_at_index,
                "keys": p.keys.iter().map(|k| serde_json::json!({
                    "keyid": k.keyid,
                    "public_key": hex::encode(&k.public_key),
                    "added_at_index": k.added_at_index,
                    "revoked_at_index": k.revoked.then_some(k.revoked_at_index),
                })).collect::<Vec<_>>(),
            });
            outln!("{}", super::text::json_pretty(&out));
            Ok(())
        }
    }
}

#[derive(Args, Debug)]
pub struct AppendArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    sign: SignArgs,
    /// Event as JSON (a file, or - for standard input):
    /// {"event_id": "...", "annotation": {"subject": "...", "kind": "...", "text": "...", "attributes": {...}}}
    #[arg(long, conflicts_with_all = ["subject"])]
    json: Option<String>,
    /// Annotation subject (with --kind/--text), when not using --json.
    #[arg(long)]
    subject: Option<String>,
    #[arg(long, default_value = "note")]
    kind: String,
    #[arg(long, default_value = "")]
    text: String,
    /// key=value attributes.
    #[arg(long = "attr")]
    attrs: Vec<String>,
    #[arg(long)]
    event_id: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEvent {
    event_id: Option<String>,
    claimed_time_unix_nanos: Option<i64>,
    annotation: JsonAnnotation,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonAnnotation {
    subject: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

pub(crate) async fn append(a: AppendArgs) -> CliResult {
    let (signer, key) = signer_of(&a.conn, &a.sign)?;
    let ev = if let Some(src) = &a.json {
        let text = if src == "-" {
            std::io::read_to_string(std::io::stdin())
                .map_err(|e| CliError::usage(format!("stdin: {e}")))?
        } else {
            // Bounded: an event's payload is at most 1 MiB; its JSON, with
            // escapes, a few times that.
            crate::files::read_bounded_text(std::path::Path::new(src), 16 << 20)
                .map_err(|e| CliError::usage(format!("{src}: {e}")))?
        };
        let j: JsonEvent = serde_json::from_str(&text)
            .map_err(|e| CliError::usage(format!("--json {src}: {e}")))?;
        Event {
            event_id: j
                .event_id
                .or(a.event_id)
                .unwrap_or_else(|| fresh_event_id("note")),
            claimed_time_nanos: j.claimed_time_unix_nanos.unwrap_or_else(now_nanos),
            signer,
            body: Body::Annotation {
                subject: j.annotation.subject,
                kind: j.annotation.kind,
                text: j.annotation.text,
                attributes: j.annotation.attributes,
            },
        }
    } else {
        let subject = a.subject.ok_or_else(|| {
            CliError::usage("give --json FILE or --subject (with --kind, --text, --attr k=v)")
        })?;
        let mut attributes = BTreeMap::new();
        for kv in a.attrs {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| CliError::usage(format!("--attr {kv:?}: expected key=value")))?;
            attributes.insert(k.to_owned(), v.to_owned());
        }
        Event {
            event_id: a.event_id.unwrap_or_else(|| fresh_event_id("note")),
            claimed_time_nanos: now_nanos(),
            signer,
            body: Body::Annotation {
                subject,
                kind: a.kind,
                text: a.text,
                attributes,
            },
        }
    };
    submit(&a.conn, &key, ev).await
}

#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    conn: ConnArgs,
    index: u64,
}

fn entry_json(index: u64, bytes: &[u8], leaf: &[u8]) -> serde_json::Value {
    let decoded = Entry::decode(bytes);
    let mut v = serde_json::json!({
        "index": index,
        "leaf_hash": hex::encode(leaf),
        "entry": hex::encode(bytes),
    });
    if let Ok(e) = decoded {
        v["format_version"] = bytes[0].into();
        if let Some(n) = e.history_count {
            v["history_count"] = n.into();
        }
        if let Some(basis) = &e.basis {
            v["basis"] = basis
                .iter()
                .map(|(k, n)| (k.clone(), serde_json::Value::from(*n)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        v["integrated_time_unix_nanos"] = e.integrated_time_nanos.into();
        v["transport_identity"] = e.transport_identity.clone().into();
        if let Ok(ev) = crate::api::convert::decode_event(&e.envelope.payload) {
            v["event_id"] = ev.event_id.into();
            v["signer"] = ev.signer.to_string().into();
            v["body"] = ev.body.kind_name().into();
            v["claimed_time_unix_nanos"] = ev.claimed_time_nanos.into();
        }
    }
    v
}

pub(crate) async fn get(a: GetArgs) -> CliResult {
    let mut client = Conn::resolve(&a.conn)?.ledger().await?;
    let r = client
        .get_entry(pb::GetEntryRequest { index: a.index })
        .await
        .map_err(|s| status_err("get", s))?
        .into_inner();
    outln!(
        "{}",
        super::text::json_pretty(&entry_json(r.index, &r.entry, &r.leaf_hash))
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct CheckpointArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Save the signed note to this file (for `docket verify --since`).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub(crate) async fn checkpoint(a: CheckpointArgs) -> CliResult {
    let mut client = Conn::resolve(&a.conn)?.ledger().await?;
    let cp = client
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .map_err(|s| status_err("checkpoint", s))?
        .into_inner();
    let v = log_verifier(&a.conn)?;
    Checkpoint::verify(&cp.note, &v, v.name())
        .map_err(|e| CliError::failed(format!("the server's checkpoint does not verify: {e}")))?;
    out!("{}", cp.note);
    if let Some(out) = a.out {
        std::fs::write(&out, &cp.note)
            .map_err(|e| CliError::failed(format!("{}: {e}", out.display())))?;
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum ProofCmd {
    /// Inclusion proof of an entry in a tree size (default: latest), verified.
    Inclusion {
        #[command(flatten)]
        conn: ConnArgs,
        index: u64,
        #[arg(long, default_value_t = 0)]
        tree_size: u64,
    },
    /// Fetch a consistency proof between two tree sizes (default new: latest).
    /// To check one against a checkpoint you saved, use `docket verify --since`.
    Consistency {
        #[command(flatten)]
        conn: ConnArgs,
        old_size: u64,
        #[arg(long, default_value_t = 0)]
        new_size: u64,
    },
}

pub(crate) async fn proof(c: ProofCmd) -> CliResult {
    match c {
        ProofCmd::Inclusion {
            conn,
            index,
            tree_size,
        } => {
            let mut client = Conn::resolve(&conn)?.ledger().await?;
            // The checkpoint first, and the proof for its size: asked for
            // "the latest" separately, the two could name different sizes
            // while the log grows.
            let cp = client
                .get_checkpoint(pb::GetCheckpointRequest {})
                .await
                .map_err(|s| status_err("checkpoint", s))?
                .into_inner();
            let v = log_verifier(&conn)?;
            let cp = Checkpoint::verify(&cp.note, &v, v.name()).map_err(CliError::failed)?;
            let tree_size = if tree_size == 0 { cp.size } else { tree_size };
            let p = client
                .get_inclusion_proof(pb::InclusionProofRequest { index, tree_size })
                .await
                .map_err(|s| status_err("inclusion proof", s))?
                .into_inner();
            let e = client
                .get_entry(pb::GetEntryRequest { index })
                .await
                .map_err(|s| status_err("get", s))?
                .into_inner();
            let root = if p.tree_size == cp.size {
                cp.root
            } else {
                // Prove the older tree is a prefix of the signed one first.
                return Err(CliError::usage(
                    "verifying against a non-latest tree size needs that checkpoint; use --tree-size 0",
                ));
            };
            merkle::verify_inclusion(
                &merkle::leaf_hash(&e.entry),
                index,
                p.tree_size,
                &hashes(&p.hashes)?,
                &root,
            )
            .map_err(|e| CliError::failed(format!("inclusion proof does not verify: {e}")))?;
            outln!(
                "{}",
                serde_json::json!({"index": index, "tree_size": p.tree_size, "root": hex::encode(root),
                    "hashes": p.hashes.iter().map(hex::encode).collect::<Vec<_>>(), "verified": true})
            );
            Ok(())
        }
        ProofCmd::Consistency {
            conn,
            old_size,
            new_size,
        } => {
            let mut client = Conn::resolve(&conn)?.ledger().await?;
            let p = client
                .get_consistency_proof(pb::ConsistencyProofRequest { old_size, new_size })
                .await
                .map_err(|s| status_err("consistency proof", s))?
                .into_inner();
            outln!(
                "{}",
                serde_json::json!({"old_size": p.old_size, "new_size": p.new_size,
                    "hashes": p.hashes.iter().map(hex::encode).collect::<Vec<_>>()})
            );
            Ok(())
        }
    }
}

#[derive(Args, Debug)]
pub struct TailArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// First index to send.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Keep streaming new entries as they become durable.
    #[arg(long)]
    follow: bool,
}

pub(crate) async fn tail(a: TailArgs) -> CliResult {
    let mut client = Conn::resolve(&a.conn)?.ledger().await?;
    let mut s = client
        .tail(pb::TailRequest {
            from_index: a.from,
            follow: a.follow,
        })
        .await
        .map_err(|s| status_err("tail", s))?
        .into_inner();
    while let Some(e) = s.message().await.map_err(|s| status_err("tail", s))? {
        // A reader that went away ends a follow.
        if !super::write_out(format_args!(
            "{}\n",
            super::text::json_line(&entry_json(e.index, &e.entry, &e.leaf_hash))
        )) {
            break;
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Check a saved checkpoint is consistent with the server's latest one
    /// (the server from --server, or the data dir's config).
    #[arg(long)]
    since: Option<PathBuf>,
    /// Trusted log verifier key file (name+id+key); defaults to <data>/log.vkey.
    #[arg(long)]
    log_key: Option<PathBuf>,
}

pub(crate) async fn verify(a: VerifyArgs) -> CliResult {
    // Offline, the data directory comes first: say so when it is not one.
    if a.since.is_none() {
        super::require_data_dir(&DataDir::new(&a.conn.data.data))?;
    }
    let verifier = match &a.log_key {
        Some(p) => {
            let t = crate::files::read_bounded_text(p, 64 << 10)
                .map_err(|e| CliError::usage(format!("{}: {e}", p.display())))?;
            NoteVerifier::from_vkey(t.trim())
                .map_err(|e| CliError::usage(format!("{}: {e}", p.display())))?
        }
        None => log_verifier(&a.conn)?,
    };
    if let Some(since) = &a.since {
        let old_note = crate::files::read_bounded_text(since, 64 << 10)
            .map_err(|e| CliError::usage(format!("{}: {e}", since.display())))?;
        let old = Checkpoint::verify(&old_note, &verifier, verifier.name())
            .map_err(|e| CliError::failed(format!("{}: {e}", since.display())))?;
        let mut client = Conn::resolve(&a.conn)?.ledger().await?;
        let cur = client
            .get_checkpoint(pb::GetCheckpointRequest {})
            .await
            .map_err(|s| status_err("checkpoint", s))?
            .into_inner();
        let new = Checkpoint::verify(&cur.note, &verifier, verifier.name())
            .map_err(|e| CliError::failed(format!("server checkpoint: {e}")))?;
        if new.size < old.size {
            return Err(CliError::failed(format!(
                "INCONSISTENT: the server's tree ({}) is smaller than the saved checkpoint ({}): history was truncated",
                new.size, old.size
            )));
        }
        let proof = if old.size == 0 || old.size == new.size {
            Vec::new()
        } else {
            let p = client
                .get_consistency_proof(pb::ConsistencyProofRequest {
                    old_size: old.size,
                    new_size: new.size,
                })
                .await
                .map_err(|s| status_err("consistency proof", s))?
                .into_inner();
            hashes(&p.hashes)?
        };
        merkle::verify_consistency(old.size, new.size, &proof, &old.root, &new.root).map_err(|e| {
            CliError::failed(format!(
                "INCONSISTENT: saved checkpoint (size {}) is not a prefix of the server's (size {}): {e}; history was rewritten",
                old.size, new.size
            ))
        })?;
        outln!(
            "consistent: saved tree size {} is a prefix of the server's tree size {}",
            old.size,
            new.size
        );
        return Ok(());
    }
    // A scratch copy: opening a damaged store in place would cut it.
    let dd = DataDir::new(&a.conn.data.data);
    let (checked, secs) = super::surviving_store_panics(|| {
        let scratch = super::open_offline_copy(&dd)?;
        let started = std::time::Instant::now();
        let checked = crate::verify::verify_store(&scratch.store, Some(&verifier));
        Ok((checked, started.elapsed().as_secs_f64()))
    })?;
    match checked {
        Ok(r) => {
            outln!(
                "OK: {} entries, {} checkpoints, root {} ({:.0} entries/s)",
                r.entries,
                r.checkpoints,
                hex::encode(r.root),
                r.entries as f64 / secs.max(1e-9)
            );
            if let Some((index, what)) = &r.first_unknown {
                eprintln!(
                    "warning: {} entries carry protobuf fields this version of Docket does not \
                     define (the first, entry {index}: {}); they read as before, but a version \
                     that gives those fields a meaning would read them differently",
                    r.unknown_fields,
                    super::text::printable(what)
                );
            }
            Ok(())
        }
        Err(f) => Err(CliError::failed(format!("FAILED at {f}"))),
    }
}

#[derive(Args, Debug)]
pub struct RebuildArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Replace the live state with the rebuilt one when they differ.
    #[arg(long)]
    replace: bool,
}

pub(crate) fn rebuild(a: RebuildArgs) -> CliResult {
    let dd = DataDir::new(&a.data.data);
    let store = std::sync::Arc::new(super::open_offline_store(&dd)?);
    let outcome = rebuild_compare(&store).map_err(CliError::failed)?;
    match outcome {
        RebuildOutcome::Equal { entries, bytes } => {
            outln!(
                "rebuilt state from {entries} entries: identical to the live state ({bytes} bytes)"
            );
            Ok(())
        }
        RebuildOutcome::Differs { first_key, rebuilt } => {
            if a.replace {
                store.replace_state(rebuilt).map_err(CliError::failed)?;
                outln!(
                    "live state differed (first at key {first_key:?}); replaced with the rebuilt state"
                );
                Ok(())
            } else {
                Err(CliError::failed(format!(
                    "live state DIFFERS from the rebuilt state, first at key {first_key:?}"
                )))
            }
        }
    }
}

/// The result of replaying the log into fresh state.
#[derive(Debug)]
pub enum RebuildOutcome {
    Equal {
        entries: u64,
        bytes: usize,
    },
    Differs {
        first_key: String,
        rebuilt: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

/// Replays the whole log into fresh state and compares it byte for byte with
/// the persisted state.
pub fn rebuild_compare<S: crate::ledger::Store + ?Sized>(
    store: &std::sync::Arc<S>,
) -> Result<RebuildOutcome, String> {
    use crate::ledger::LedgerReader;
    let reader = LedgerReader::new(store.clone());
    let size = reader.size().map_err(|e| e.to_string())?;
    let mut state = State::new();
    service::fold_entries(&reader, &mut state, size).map_err(|e| e.to_string())?;
    let mut rebuilt: Vec<(Vec<u8>, Vec<u8>)> = state.take_changes();
    rebuilt.sort();
    let live = store.state_pairs().map_err(|e| e.to_string())?;
    if live == rebuilt {
        let bytes = live.iter().map(|(k, v)| k.len() + v.len()).sum();
        return Ok(RebuildOutcome::Equal {
            entries: size,
            bytes,
        });
    }
    let first_key = live
        .iter()
        .zip(rebuilt.iter())
        .find(|(a, b)| a != b)
        .map(|(a, _)| String::from_utf8_lossy(&a.0).into_owned())
        .unwrap_or_else(|| "<one side has extra keys>".into());
    Ok(RebuildOutcome::Differs { first_key, rebuilt })
}
