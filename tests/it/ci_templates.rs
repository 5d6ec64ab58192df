//! The CI templates (clients/ci): their own test suite, and the pipeline the
//! examples describe run for real through `docket-ci.sh` against a server,
//! once as GitHub Actions and once as GitLab CI would run it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{BIN, CliOut, TestServer, digest, server};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn template_suite_passes() {
    let out = std::process::Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(root().join("clients/ci/tests"))
        .output()
        .expect("python3 with pytest and PyYAML (see .ci/run)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Pipeline {
    vars: Vec<(String, String)>,
}

impl Pipeline {
    async fn step(&self, args: &[&str]) -> CliOut {
        let mut cmd = tokio::process::Command::new(root().join("clients/ci/docket-ci.sh"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        let out = cmd.output().await.unwrap();
        CliOut {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Registers `id` (e-mail `<id>@example.com`, the identity of its git
/// commits) and returns its key file.
async fn principal(s: &TestServer, dir: &Path, id: &str, kind: &str, role: &str) -> PathBuf {
    let key = dir.join(format!("{id}.key"));
    let email = format!("{id}@example.com");
    s.add_principal(&key, id, kind, role, Some(&email)).await;
    key
}

/// The pipeline of clients/ci/github/example-workflow.yml and
/// gitlab/example.gitlab-ci.yml: report the build, gate and record staging,
/// gate prod (denied until reviewed), then gate and record prod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_pipelines_run_against_a_real_server() {
    let s = server().with_policy(crate::evidence::POLICY).run().await;
    let dir = s.path().join("ci");
    std::fs::create_dir_all(&dir).unwrap();
    let ci_key = principal(&s, &dir, "ci", "ci", "ci").await;
    let bob_key = principal(&s, &dir, "bob", "human", "dev").await;
    let carol_key = principal(&s, &dir, "carol", "human", "security").await;
    let erin_key = principal(&s, &dir, "erin", "human", "dev").await;
    let tls = s.data.tls();
    // The code the pipeline builds: a real commit by bob.
    let repo = crate::governance::repo(&dir);
    let commit = &crate::governance::commit(
        &repo,
        "Bob",
        "bob@example.com",
        None,
        "retry.rs",
        "payments: retry declined cards once",
    );
    let d = digest("image-ci");
    let summary = dir.join("summary.md");
    let json_out = dir.join("decision.json");
    let base = |key: &PathBuf| -> Vec<(String, String)> {
        [
            ("DOCKET_BIN", BIN.to_owned()),
            (
                "DOCKET_SERVER",
                format!("https://127.0.0.1:{}", s.addr.port()),
            ),
            ("DOCKET_CA", tls.ca_cert.display().to_string()),
            ("DOCKET_CERT", tls.client_cert.display().to_string()),
            ("DOCKET_CERT_KEY", tls.client_key.display().to_string()),
            ("DOCKET_LOG_VKEY", s.data.log_vkey().display().to_string()),
            ("DOCKET_KEY", key.display().to_string()),
            ("DOCKET_SIGNER", "ci".to_owned()),
            ("DOCKET_LOG", "warn".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    };
    let mut gh = base(&ci_key);
    gh.extend(
        [
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_SERVER_URL", "https://github.com"),
            ("GITHUB_REPOSITORY", "acme/payments"),
            ("GITHUB_RUN_ID", "4242"),
            ("GITHUB_SHA", commit),
            ("GITHUB_WORKFLOW", "build"),
            ("GITHUB_REF", "refs/heads/main"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    gh.push(("GITHUB_STEP_SUMMARY".into(), summary.display().to_string()));
    gh.push(("DOCKET_JSON_OUT".into(), json_out.display().to_string()));
    let p = Pipeline { vars: gh };

    // build job: report the run, read from GitHub's variables.
    let out = p.step(&["report", "passed", &d]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("4242 (github-actions build) passed"),
        "{}",
        out.stdout
    );

    // No change binds the digest yet: the gate denies and says why.
    let out = p.step(&["gate", "staging", &d]).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("no change binds"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("::error title=Docket gate: DENY for staging")
            || out
                .stderr
                .contains("::error title=Docket gate: DENY for staging"),
        "{}{}",
        out.stdout,
        out.stderr
    );

    // A developer flow opens the change (here: the CI principal, as a bot would).
    s.cli_ok(&[
        "change",
        "open",
        "--id",
        "CHG-CI",
        "--commit",
        commit,
        "--digest",
        &d,
        "--env",
        "staging",
        "--env",
        "prod",
        "--key",
        ci_key.to_str().unwrap(),
        "--signer",
        "ci",
    ])
    .await;
    // The commit must be observed for segregation of duties; CI records it.
    // (Here we observe no commit, so prod stays denied until it is; staging needs none.)
    let out = p.step(&["gate", "staging", &d]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let decision: Value = serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    assert_eq!(decision["verdict"], "allow");
    assert_eq!(decision["rule"], "staging");
    let out = p.step(&["deploy", "staging", &d]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let recorded: Value = serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    assert_eq!(recorded["recorded"], true);

    // prod: denied (no approvals, commit authors unknown), then reviewed.
    let out = p.step(&["gate", "prod", &d]).await;
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("needs 2 approvals"), "{}", out.stdout);
    for (who, key) in [("bob", &bob_key), ("carol", &carol_key)] {
        s.cli_ok(&[
            "approve",
            "CHG-CI",
            "--key",
            key.to_str().unwrap(),
            "--signer",
            who,
        ])
        .await;
    }
    let out = p.step(&["gate", "prod", &d]).await;
    assert_eq!(
        out.code, 1,
        "the commit is still unobserved: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains("has not been observed"),
        "{}",
        out.stdout
    );
    // Amending the change to the artifact alone does not hide the code: the
    // CI run says which commit the image was built from.
    s.cli_ok(&[
        "change",
        "amend",
        "--id",
        "CHG-CI",
        "--digest",
        &d,
        "--key",
        ci_key.to_str().unwrap(),
        "--signer",
        "ci",
    ])
    .await;
    for (who, key) in [("bob", &bob_key), ("carol", &carol_key)] {
        s.cli_ok(&[
            "approve",
            "CHG-CI",
            "--key",
            key.to_str().unwrap(),
            "--signer",
            who,
        ])
        .await;
    }
    let out = p.step(&["gate", "prod", &d]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "commit {} (built into {}) has not been observed",
            &commit[..12],
            &d[..19]
        )),
        "{}",
        out.stdout
    );
    // The pipeline records its commits; now bob is known as the author of
    // what is in the image, and his approval does not count.
    s.cli_ok(&[
        "git",
        "ingest",
        "--repo",
        repo.to_str().unwrap(),
        "--ref",
        "HEAD",
        "--key",
        ci_key.to_str().unwrap(),
        "--signer",
        "ci",
    ])
    .await;
    let out = p.step(&["gate", "prod", &d]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    let decision: Value = serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    assert!(
        decision["not_counted"].as_array().unwrap().iter().any(|n| {
            n["approver"] == "bob"
                && n["reason"] == "bob is a commit author or committer of the change"
        }),
        "bob must not be counted: {decision}"
    );
    assert_eq!(decision["counted"][0]["approver"], "carol", "{decision}");
    // A second reviewer who did not write the code.
    s.cli_ok(&[
        "approve",
        "CHG-CI",
        "--key",
        erin_key.to_str().unwrap(),
        "--signer",
        "erin",
    ])
    .await;
    let out = p.step(&["gate", "prod", &d]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = p.step(&["deploy", "prod", &d]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let summary = std::fs::read_to_string(&summary).unwrap();
    assert!(summary.contains("prod"), "{summary}");

    // GitLab CI: the same script reads GitLab's variables.
    let mut gl = base(&ci_key);
    gl.extend(
        [
            ("GITLAB_CI", "true"),
            ("CI_SERVER_HOST", "gitlab.example.com"),
            ("CI_PROJECT_PATH", "acme/payments"),
            ("CI_PIPELINE_ID", "77"),
            (
                "CI_PIPELINE_URL",
                "https://gitlab.example.com/acme/payments/-/pipelines/77",
            ),
            ("CI_COMMIT_SHA", "89abcdef0123456789abcdef0123456789abcdef"),
            ("CI_JOB_NAME", "build-image"),
            ("CI_COMMIT_REF_NAME", "main"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let p = Pipeline { vars: gl };
    let out = p.step(&["report", "failed", &digest("image-gl")]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("77 (gitlab-ci build-image) failed"),
        "{}",
        out.stdout
    );
}
