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
    /// The same pipeline with `set` replacing (or adding) variables.
    fn with(&self, set: &[(&str, &str)]) -> Pipeline {
        let mut vars = self.vars.clone();
        vars.retain(|(k, _)| !set.iter().any(|(s, _)| s == k));
        vars.extend(set.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Pipeline { vars }
    }

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
/// gitlab/example.gitlab-ci.yml, every step through docket-ci.sh: record
/// the commits, report the build, open the change, gate and record staging,
/// gate prod (denied until reviewed), approvals (example-approve.yml), then
/// gate and record prod; a second push amends the change and makes the
/// approvals stale.
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
            ("DOCKET_REPO", repo.display().to_string()),
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
            // The action sets it from github.event.repository.default_branch.
            ("DOCKET_GIT_DEFAULT_BRANCH", "main"),
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

    // The build job opens the change: this commit and its image, for
    // staging and prod, the repository read from GitHub's variables.
    let out = p.step(&["open", "CHG-CI", "staging,prod", &d]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let shown = s.cli_ok(&["change", "show", "CHG-CI"]).await;
    let change: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(change["repository"], "github.com/acme/payments", "{change}");
    let out = p.step(&["gate", "staging", &d]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let decision: Value = serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    assert_eq!(decision["verdict"], "allow");
    assert_eq!(decision["rule"], "staging");
    let out = p.step(&["deploy", "staging", &d]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let recorded: Value = serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    assert_eq!(recorded["recorded"], true);

    // prod: denied until reviewed. Reviewers approve through the same
    // script, each with their own key (a job only they can release).
    let out = p.step(&["gate", "prod", &d]).await;
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("needs 2 approvals"), "{}", out.stdout);
    let as_ = |who: &str, key: &PathBuf| {
        p.with(&[
            ("DOCKET_KEY", &key.display().to_string()),
            ("DOCKET_SIGNER", who),
        ])
    };
    for (who, key) in [("bob", &bob_key), ("carol", &carol_key)] {
        let out = as_(who, key).step(&["approve", "CHG-CI"]).await;
        assert_eq!(out.code, 0, "{who}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stdout
                .contains(&format!("{who} approved change CHG-CI"))
        );
    }
    // The commit is not in the log yet, so who wrote it is unknown.
    let out = p.step(&["gate", "prod", &d]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.contains("has not been observed"),
        "{}",
        out.stdout
    );
    // The pipeline records its commits (no push information: the whole
    // history of GITHUB_SHA); now bob is known as the author, and his
    // approval does not count.
    let out = p.step(&["ingest"]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("1 commit(s) recorded, 0 already in the log"),
        "{}",
        out.stdout
    );
    let out = p.step(&["gate", "prod", &d]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    let decision: Value = serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    assert!(
        decision["not_counted"].as_array().unwrap().iter().any(|n| {
            n["approver"] == "bob"
                && n["reason"]
                    == format!(
                        "bob is the author and committer of commit {}",
                        &commit[..12]
                    )
        }),
        "bob must not be counted: {decision}"
    );
    assert_eq!(decision["counted"][0]["approver"], "carol", "{decision}");
    // A second reviewer who did not write the code.
    let out = as_("erin", &erin_key)
        .step(&["approve", "CHG-CI", commit, &d])
        .await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = p.step(&["gate", "prod", &d]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    // Someone else's change binding the same image, opened later, is the
    // one a gate that names no change considers; naming it keeps ours.
    let erin = erin_key.display().to_string();
    s.cli_ok(&[
        "change", "open", "--id", "OTHER", "--digest", &d, "--env", "prod", "--key", &erin,
        "--signer", "erin",
    ])
    .await;
    let out = p.step(&["gate", "prod", &d]).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("CHG-CI bind(s) them too"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let p = p.with(&[("DOCKET_CHANGE", "CHG-CI")]);
    let out = p.step(&["gate", "prod", &d]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = p.step(&["deploy", "prod", &d]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let summary_text = std::fs::read_to_string(&summary).unwrap();
    assert!(summary_text.contains("prod"), "{summary_text}");

    // The pipeline run again for the same commit and image: nothing to do.
    let out = p.step(&["open", "CHG-CI", "staging,prod", &d]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("nothing to do"), "{}", out.stdout);

    // A new push: only its commit is ingested, the change is amended to it
    // and the new image, and every earlier approval is stale.
    let commit2 = crate::governance::commit(
        &repo,
        "Bob",
        "bob@example.com",
        None,
        "retry.rs",
        "payments: retry declined cards twice",
    );
    let d2 = digest("image-ci-2");
    let p2 = p.with(&[("GITHUB_SHA", &commit2), ("DOCKET_GIT_BEFORE", commit)]);
    let out = p2.step(&["ingest"]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("1 commit(s) recorded, 0 already in the log"),
        "{}",
        out.stdout
    );
    let out = p2.step(&["open", "CHG-CI", "staging,prod", &d2]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("amending it"), "{}", out.stdout);
    let out = p2.step(&["report", "passed", &d2]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = p2.step(&["gate", "prod", &d2]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    let decision: Value = serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    let stale = decision["not_counted"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["reason"] == "stale: approved an earlier revision of the change")
        .count();
    assert_eq!(
        stale, 3,
        "bob, carol and erin approved revision 1: {decision}"
    );
    // An approver who reviewed the old subjects approves with them: the
    // review is recorded (they are a revision's subjects) but does not
    // count for the new revision.
    let out = as_("erin", &erin_key)
        .step(&["approve", "CHG-CI", commit, &d])
        .await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = p2.step(&["gate", "prod", &d2]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    let decision: Value = serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    assert!(
        decision["not_counted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["approver"] == "erin"
                && n["reason"] == "stale: approved an earlier revision of the change"),
        "{decision}"
    );
    // Subjects of no revision are refused by the log, and the step fails.
    let out = as_("erin", &erin_key)
        .step(&["approve", "CHG-CI", &digest("never-built")])
        .await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);

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
            ("CI_DEFAULT_BRANCH", "main"),
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
    // A pipeline for a new branch (CI_COMMIT_BEFORE_SHA all zeros) ingests
    // the commit's history: both commits are in the log already.
    let gl = p.with(&[
        ("CI_COMMIT_SHA", &commit2),
        ("CI_COMMIT_BEFORE_SHA", &"0".repeat(40)),
    ]);
    let out = gl.step(&["ingest"]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("0 commit(s) recorded, 2 already in the log"),
        "{}",
        out.stdout
    );
    let d3 = digest("image-gl-2");
    let out = gl.step(&["report", "passed", &d3]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = gl.step(&["open", "gl-77", "staging", &d3]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let shown = s.cli_ok(&["change", "show", "gl-77"]).await;
    let change: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        change["repository"], "gitlab.example.com/acme/payments",
        "{change}"
    );
    let out = gl.step(&["gate", "staging", &d3]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}
