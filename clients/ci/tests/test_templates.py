"""Checks of the CI templates and of docket-ci.sh.

The YAML files are parsed and checked for how they fit together (inputs used
are inputs declared, `uses:` and `include:` point at files that exist, jobs
extend jobs the template defines). The shell parts are run, with a fake
`docket` that records its arguments, so the tests see the exact command lines
the templates would run: no server is needed.

Run: python3 -m pytest -q clients/ci/tests
"""

import base64
import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

CI = Path(__file__).resolve().parents[1]
REPO = CI.parents[1]
SCRIPT = CI / "docket-ci.sh"
ACTION = CI / "github" / "action.yml"
WORKFLOW = CI / "github" / "example-workflow.yml"
APPROVE_WF = CI / "github" / "example-approve.yml"
TEMPLATE = CI / "gitlab" / "docket.gitlab-ci.yml"
GL_EXAMPLE = CI / "gitlab" / "example.gitlab-ci.yml"

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64
EXPR = re.compile(r"\$\{\{(.*?)\}\}", re.S)
INPUT_REF = re.compile(r"\binputs\.([A-Za-z0-9_-]+)")
EXPECTED_INPUTS = {
    "command", "environment", "digests", "status", "server", "ca", "cert",
    "cert-key", "key", "signer", "log-vkey", "docket-bin", "change", "range",
}
C1 = "0123456789abcdef0123456789abcdef01234567"
C0 = "89abcdef0123456789abcdef0123456789abcdef"


# --- helpers -------------------------------------------------------------------


class GitLabLoader(yaml.SafeLoader):
    """SafeLoader that also reads GitLab's `!reference [job, key]` tag."""


class Reference(list):
    pass


GitLabLoader.add_constructor(
    "!reference", lambda loader, node: Reference(loader.construct_sequence(node))
)


def load(path):
    return yaml.load(path.read_text(), Loader=GitLabLoader)


def workflow_steps(wf):
    for name, job in wf["jobs"].items():
        for i, step in enumerate(job.get("steps", [])):
            yield name, i, step


FAKE_DOCKET = r"""#!/usr/bin/env bash
# Records how it was called; answers like docket would.
printf '%s\n' "$@" > "$FAKE_DIR/args"
echo "$*" >> "$FAKE_DIR/calls"
env | grep '^DOCKET_' | sort > "$FAKE_DIR/env" || true
verdict="${FAKE_VERDICT:-allow}"
json=false
for a in "$@"; do [[ "$a" == --json ]] && json=true; done
if [[ "$1 $2" == "change show" ]]; then
  if [[ -n "${FAKE_SHOW_FAILS:-}" ]]; then
    echo 'error: get change: Unavailable: connection refused' >&2
    exit 69
  fi
  if [[ -z "${FAKE_CHANGE_EXISTS:-}" ]]; then
    echo 'error: get change: NotFound: no change "gh-7"' >&2
    exit 1
  fi
  printf '{\n  "change_id": "gh-7",\n  "commits": [\n    "%s"\n  ],\n  "artifact_digests": [\n    "%s"\n  ]\n}\n' "${FAKE_BOUND:-}" "sha256:$(printf 'c%.0s' {1..64})"
  exit 0
fi
if [[ "$1 $2" == "change open" && -n "${FAKE_CHANGE_EXISTS:-}" ]]; then
  echo 'error: change "gh-7" already exists' >&2
  exit 1
fi
if [[ "$1 $2" == "change amend" && -n "${FAKE_SAME_SUBJECTS:-}" ]]; then
  echo 'error: the amendment of change "gh-7" binds the same subjects and environments as its current revision' >&2
  exit 1
fi
if [[ "$1" == ci ]]; then
  echo "recorded CI run 7 (fake) passed for abc at entry 3"
  exit "${FAKE_RC:-0}"
fi
if $json; then
  cat <<EOF
{
  "verdict": "$verdict",
  "rule": "prod",
  "policy_version": 3,
  "change_id": "CHG-9",
  "change_revision": 2,
  "reasons": ["$FAKE_REASON"],
  "counted": [],
  "not_counted": [],
  "obligations": [],
  "recorded": false,
  "index": null
}
EOF
fi
if [[ "$verdict" == deny ]]; then
  echo "error: denied: $FAKE_REASON" >&2
  exit 1
fi
"""


@pytest.fixture
def fake(tmp_path):
    """A fake docket binary and a complete, valid DOCKET_* environment."""
    bin_ = tmp_path / "fake-docket"
    bin_.write_text(FAKE_DOCKET)
    bin_.chmod(0o755)
    for f in ("ca.pem", "client.pem", "client.key", "ci.key", "log.vkey"):
        (tmp_path / f).write_text("x\n")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "FAKE_DIR": str(tmp_path),
        "FAKE_REASON": "needs 2 approvals from distinct people; 1 counted",
        "DOCKET_BIN": str(bin_),
        "DOCKET_SERVER": "https://docket.example:7443",
        "DOCKET_SIGNER": "ci",
        "DOCKET_KEY": str(tmp_path / "ci.key"),
        "DOCKET_CA": str(tmp_path / "ca.pem"),
        "DOCKET_CERT": str(tmp_path / "client.pem"),
        "DOCKET_CERT_KEY": str(tmp_path / "client.key"),
        "DOCKET_LOG_VKEY": str(tmp_path / "log.vkey"),
    }
    return tmp_path, env


def run(args, env, cwd=None):
    return subprocess.run(
        [str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def called(tmp):
    p = tmp / "args"
    return p.read_text().splitlines() if p.exists() else None


# --- docket-ci.sh -----------------------------------------------------------------


def test_script_exists_is_executable_and_parses():
    assert SCRIPT.is_file()
    assert SCRIPT.stat().st_mode & stat.S_IXUSR, "docket-ci.sh is not executable"
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in SCRIPT.read_text()


def test_missing_server_exits_64_naming_it(fake):
    tmp, env = fake
    del env["DOCKET_SERVER"]
    r = run(["gate", "prod", D1], env)
    assert r.returncode == 64, (r.stdout, r.stderr)
    assert "DOCKET_SERVER" in r.stderr
    assert called(tmp) is None, "docket must not run when the configuration is incomplete"


def test_no_arguments_and_no_environment_exit_64():
    r = subprocess.run([str(SCRIPT)], env={"PATH": os.environ["PATH"]},
                       capture_output=True, text=True)
    assert r.returncode == 64
    assert "DOCKET_SERVER" in r.stderr


@pytest.mark.parametrize("var", ["DOCKET_KEY", "DOCKET_SIGNER"])
def test_missing_key_or_signer_exits_64_naming_it(fake, var):
    tmp, env = fake
    del env[var]
    r = run(["deploy", "prod", D1], env)
    assert r.returncode == 64
    assert var in r.stderr
    assert called(tmp) is None


def test_unknown_command_exits_64(fake):
    tmp, env = fake
    r = run(["frobnicate", "prod", D1], env)
    assert r.returncode == 64
    assert "frobnicate" in r.stderr
    assert called(tmp) is None


@pytest.mark.parametrize(
    "args, words",
    [
        (["gate"], "ENVIRONMENT"),
        (["gate", "prod"], "DIGEST"),
        (["deploy", "prod"], "DIGEST"),
        (["report"], "STATUS"),
        (["open"], "CHANGE"),
        (["open", "gh-7"], "ENVIRONMENTS"),
        (["open", "gh-7", "prod"], "DIGEST"),
        (["open", "gh-7", "prod", "sha256:abc"], "not an artifact digest"),
        (["approve"], "CHANGE"),
        (["approve", "gh-7", "main"], "not a subject"),
        (["ingest", "main"], "not a range"),
        (["ingest", "a..b", "c..d"], "at most one range"),
        (["gate", "prod", "sha256:abc"], "not an artifact digest"),
        (["deploy", "prod", "ghcr.io/acme/app:latest"], "not an artifact digest"),
    ],
)
def test_missing_or_bad_arguments_exit_64(fake, args, words):
    tmp, env = fake
    r = run(args, env)
    assert r.returncode == 64, (args, r.stdout, r.stderr)
    assert words in r.stderr
    assert called(tmp) is None


def test_open_needs_the_pipelines_commit(fake):
    tmp, env = fake
    r = run(["open", "gh-7", "prod", D1], env)
    assert r.returncode == 64
    assert "GITHUB_SHA" in r.stderr and "CI_COMMIT_SHA" in r.stderr
    assert called(tmp) is None


def test_open_amends_an_existing_change_and_a_rerun_does_nothing(fake):
    tmp, env = fake
    # C1 is in no clone: the tip alone is bound, as the job asks.
    env.update({"GITLAB_CI": "true", "CI_COMMIT_SHA": C1, "CI_SERVER_HOST": "gitlab.example.com",
                "CI_PROJECT_PATH": "acme/app", "DOCKET_TICKET": "OPS-1",
                "DOCKET_DANGEROUS_TIP_ONLY": "true"})
    r = run(["open", "gh-7", "staging,prod", D1, D2], env)
    assert r.returncode == 0, r.stderr
    assert called(tmp) == ["change", "open", "--id", "gh-7", "--commit", C1, "--digest", D1,
                           "--digest", D2, "--env", "staging", "--env", "prod",
                           "--repository", "gitlab.example.com/acme/app", "--ticket", "OPS-1"]
    (tmp / "calls").unlink()
    env["FAKE_CHANGE_EXISTS"] = "1"
    r = run(["open", "gh-7", "staging,prod", D1], env)
    assert r.returncode == 0, r.stderr
    assert "amending it" in r.stdout
    calls = (tmp / "calls").read_text().splitlines()
    assert [c.split()[:2] for c in calls] == [["change", "show"], ["change", "open"],
                                              ["change", "amend"]]
    assert calls[2] == f"change amend --id gh-7 --commit {C1} --digest {D1} --env staging --env prod"
    env["FAKE_SAME_SUBJECTS"] = "1"
    r = run(["open", "gh-7", "staging,prod", D1], env)
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stdout


def _two_commits(repo):
    """A real repository with two commits; returns (first, second)."""
    git = ["git", "-C", str(repo), "-c", "user.name=A", "-c", "user.email=a@example.com",
           "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    shas = []
    for n in (1, 2):
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", f"c{n}"], check=True)
        shas.append(subprocess.run([*git, "rev-parse", "HEAD"], check=True,
                                   capture_output=True, text=True).stdout.strip())
    return shas


def test_open_binds_every_commit_of_the_push_and_keeps_those_already_bound(fake):
    tmp, env = fake
    repo = tmp / "app"
    first, second = _two_commits(repo)
    git = ["git", "-C", str(repo), "-c", "user.name=B", "-c", "user.email=b@example.com",
           "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "c3"], check=True)
    third = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                           text=True).stdout.strip()
    env.update({"GITLAB_CI": "true", "CI_COMMIT_SHA": third, "CI_PROJECT_PATH": "acme/app",
                "CI_COMMIT_BEFORE_SHA": first, "DOCKET_REPO": str(repo)})
    # The push brought second and third: both are bound, so both authors are excluded.
    r = run(["open", "gh-7", "prod", D1], env)
    assert r.returncode == 0, r.stderr
    assert called(tmp)[:7] == ["change", "open", "--id", "gh-7", "--commit", third,
                               "--commit"]
    assert called(tmp)[7] == second and called(tmp).count("--commit") == 2
    # A later pipeline for the change keeps what it binds (C1) and adds this push's.
    env.update({"FAKE_CHANGE_EXISTS": "1", "FAKE_BOUND": C1})
    r = run(["open", "gh-7", "prod", D1], env)
    assert r.returncode == 0, r.stderr
    amend = called(tmp)
    assert amend[:2] == ["change", "amend"]
    bound = [amend[i + 1] for i, a in enumerate(amend) if a == "--commit"]
    assert bound == [third, second, C1]
    # No range (a new branch, a force push): the branch's own commits, those
    # the default branch does not hold. Any other ref (here a branch at
    # second, which anyone could push to hide it) does not count.
    del env["FAKE_CHANGE_EXISTS"], env["FAKE_BOUND"]
    subprocess.run([*git, "branch", "-f", "main-line", first], check=True)
    subprocess.run([*git, "branch", "-f", "other", second], check=True)
    subprocess.run([*git, "tag", "-f", "v9", second], check=True)
    env["CI_DEFAULT_BRANCH"] = "main-line"
    for before in ["0" * 40, C0]:
        r = run(["open", "gh-7", "prod", D1], {**env, "CI_COMMIT_BEFORE_SHA": before})
        assert r.returncode == 0, r.stderr
        assert [a for a in called(tmp) if len(a) == 40] == [third, second], r.stderr
        assert "that the default branch (refs/heads/main-line) does not hold" in r.stderr
    # On the default branch itself (its first push), its whole history.
    subprocess.run([*git, "branch", "-f", "tip-line", third], check=True)
    r = run(["open", "gh-7", "prod", D1],
            {**env, "CI_COMMIT_BEFORE_SHA": "0" * 40, "CI_DEFAULT_BRANCH": "tip-line"})
    assert r.returncode == 0, r.stderr
    assert [a for a in called(tmp) if len(a) == 40] == [third, second, first], r.stderr
    assert "is on the default branch (refs/heads/tip-line)" in r.stderr
    # No default branch known, or not in the clone: nothing is opened.
    (tmp / "calls").unlink(missing_ok=True)
    for default in [None, "nowhere"]:
        e = {k: v for k, v in env.items() if k != "CI_DEFAULT_BRANCH"}
        if default:
            e["CI_DEFAULT_BRANCH"] = default
        r = run(["open", "gh-7", "prod", D1], {**e, "CI_COMMIT_BEFORE_SHA": "0" * 40})
        assert r.returncode == 64, r.stderr
        assert ("set DOCKET_GIT_DEFAULT_BRANCH" in r.stderr if default is None
                else "the default branch nowhere is not in the clone" in r.stderr), r.stderr
        assert not (tmp / "calls").exists(), "nothing sent"
    # The commit fetched for the job (the GitLab template's) is used alone,
    # and only as a commit id: after a failed fetch ("unfetched"), or given a
    # ref name, a branch of the default's name left in a reused build
    # directory does not stand in for it.
    for given in ["unfetched", "main-line", "refs/heads/main-line", C0]:
        own = {**env, "CI_COMMIT_BEFORE_SHA": "0" * 40, "DOCKET_GIT_DEFAULT_COMMIT": given}
        r = run(["open", "gh-7", "prod", D1], own)
        assert r.returncode == 64, r.stderr
        assert "is not a commit id of the clone (the default branch's fetch failed?)" in r.stderr
        assert not (tmp / "calls").exists(), "nothing sent"
    own = {**env, "CI_COMMIT_BEFORE_SHA": "0" * 40, "DOCKET_GIT_DEFAULT_COMMIT": first,
           "CI_DEFAULT_BRANCH": "tip-line"}
    r = run(["open", "gh-7", "prod", D1], own)
    assert r.returncode == 0, r.stderr
    assert [a for a in called(tmp) if len(a) == 40] == [third, second], r.stderr
    # A shallow clone cannot tell: binding the pipeline's commit alone would
    # let earlier commits' authors approve, so nothing is opened, unless the
    # job opts in by a dangerous name.
    shallow = tmp / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow)],
                   check=True)
    (tmp / "calls").unlink(missing_ok=True)
    env_s = {**env, "DOCKET_REPO": str(shallow), "CI_COMMIT_BEFORE_SHA": "0" * 40}
    r = run(["open", "gh-7", "prod", D1], env_s)
    assert r.returncode == 64, r.stderr
    assert "the clone is shallow" in r.stderr
    assert f"the change would bind {third} only, not the commits before it" in r.stderr
    assert "DOCKET_DANGEROUS_TIP_ONLY=true" in r.stderr
    assert not (tmp / "calls").exists(), "nothing sent"
    r = run(["open", "gh-7", "prod", D1], {**env_s, "DOCKET_DANGEROUS_TIP_ONLY": "true"})
    assert r.returncode == 0, r.stderr
    assert [a for a in called(tmp) if len(a) == 40] == [third]
    assert "warning: DOCKET_DANGEROUS_TIP_ONLY is set" in r.stderr
    # The change cannot be read (server down): nothing is opened or amended,
    # since an amend without its bound commits would unbind them.
    (tmp / "calls").unlink()
    r = run(["open", "gh-7", "prod", D1], {**env, "FAKE_SHOW_FAILS": "1"})
    assert r.returncode == 69, r.stderr
    assert "cannot read change gh-7" in r.stderr
    calls = (tmp / "calls").read_text().splitlines()
    assert [c.split()[:2] for c in calls] == [["change", "show"]]


def _sha(repo, rev="HEAD"):
    return subprocess.run(["git", "-C", str(repo), "rev-parse", rev], check=True,
                          capture_output=True, text=True).stdout.strip()


def _merged_in_history(repo):
    """main: m1, then carol's m2. The request's branch: b1 (off m1), then a
    merge of main into it (b2). Returns (m1, m2, b1, b2)."""
    def git(who, *args):
        subprocess.run(["git", "-C", str(repo), "-c", f"user.name={who}",
                        "-c", f"user.email={who}@example.com", "-c", "commit.gpgsign=false",
                        *args], check=True, capture_output=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    git("alice", "commit", "-q", "--allow-empty", "-m", "m1")
    m1 = _sha(repo)
    git("alice", "checkout", "-q", "-b", "feature")
    git("alice", "commit", "-q", "--allow-empty", "-m", "b1")
    b1 = _sha(repo)
    git("carol", "checkout", "-q", "main")
    git("carol", "commit", "-q", "--allow-empty", "-m", "m2")
    m2 = _sha(repo)
    git("alice", "checkout", "-q", "feature")
    git("alice", "merge", "-q", "--no-edit", "main")
    return m1, m2, b1, _sha(repo)


@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_a_request_binds_its_own_commits_not_those_its_base_brought_in(fake, platform):
    tmp, env = fake
    repo = tmp / "app"
    m1, m2, b1, b2 = _merged_in_history(repo)
    if platform == "github":
        env.update({"GITHUB_ACTIONS": "true", "GITHUB_SHA": b2, "GITHUB_REPOSITORY": "acme/app",
                    "DOCKET_GIT_BEFORE": b1, "DOCKET_GIT_BASE": m2})
    else:
        env.update({"GITLAB_CI": "true", "CI_COMMIT_SHA": b2, "CI_PROJECT_PATH": "acme/app",
                    "CI_COMMIT_BEFORE_SHA": b1, "CI_MERGE_REQUEST_DIFF_BASE_SHA": m2})
    env["DOCKET_REPO"] = str(repo)

    def bound():
        args = called(tmp)
        return [args[i + 1] for i, a in enumerate(args) if a == "--commit"]

    # The push brought the merge and carol's m2 with it; the request's work
    # over its base is b1 and the merge. carol may still approve.
    r = run(["open", "pr-9", "prod", D1], env)
    assert r.returncode == 0, r.stderr
    assert bound() == [b2, b1]
    r = run(["ingest"], env)
    assert r.returncode == 0, r.stderr
    assert called(tmp)[4:6] == ["--range", f"{m2}..{b2}"]
    # Without a base (a plain push), the push's range, m2 included.
    no_base = {k: v for k, v in env.items()
               if k not in ("DOCKET_GIT_BASE", "CI_MERGE_REQUEST_DIFF_BASE_SHA")}
    r = run(["open", "pr-9", "prod", D1], no_base)
    assert r.returncode == 0, r.stderr
    assert sorted(bound()) == sorted([b2, m2])
    # A request's first pipeline on a new branch: no push range, yet every
    # commit of the request is bound, not only its tip.
    before = "DOCKET_GIT_BEFORE" if platform == "github" else "CI_COMMIT_BEFORE_SHA"
    r = run(["open", "pr-9", "prod", D1], {**env, before: "0" * 40})
    assert r.returncode == 0, r.stderr
    assert bound() == [b2, b1] and "no push range" not in r.stderr
    # A base the clone lacks is named, and the push's range stands in.
    base_var = "DOCKET_GIT_BASE" if platform == "github" else "CI_MERGE_REQUEST_DIFF_BASE_SHA"
    r = run(["open", "pr-9", "prod", D1], {**env, base_var: C0})
    assert r.returncode == 0, r.stderr
    assert f"the request's base commit {C0} is not in the clone" in r.stderr
    assert sorted(bound()) == sorted([b2, m2])
    assert m1 not in bound()


def test_ingest_takes_the_push_from_gitlab_or_else_the_whole_history(fake):
    tmp, env = fake
    repo = tmp / "app"
    first, second = _two_commits(repo)
    env.update({"GITLAB_CI": "true", "CI_COMMIT_SHA": second, "CI_PROJECT_PATH": "acme/app",
                "CI_SERVER_HOST": "gitlab.example.com", "DOCKET_REPO": str(repo)})
    r = run(["ingest"], {**env, "CI_COMMIT_BEFORE_SHA": first})
    assert r.returncode == 0, r.stderr
    assert called(tmp) == ["git", "ingest", "--repo", str(repo), "--range", f"{first}..{second}",
                           "--repository", "gitlab.example.com/acme/app"]
    # A new branch: GitLab's "before" is all zeros.
    r = run(["ingest"], {**env, "CI_COMMIT_BEFORE_SHA": "0" * 40})
    assert r.returncode == 0, r.stderr
    assert called(tmp)[4:6] == ["--ref", second]
    # A force push: the old tip is not in the clone, so no range can start there.
    r = run(["ingest"], {**env, "CI_COMMIT_BEFORE_SHA": C0})
    assert r.returncode == 0, r.stderr
    assert called(tmp)[4:6] == ["--ref", second]
    assert "not in the clone (a shallow clone, or a force push?)" in r.stderr
    assert "reading the whole history" in r.stderr


def test_unreadable_file_is_named(fake):
    tmp, env = fake
    env["DOCKET_CERT"] = str(tmp / "nope.pem")
    r = run(["gate", "prod", D1], env)
    assert r.returncode == 64
    assert "DOCKET_CERT" in r.stderr and "nope.pem" in r.stderr


def test_deploy_without_verifier_key_stops_before_sending(fake):
    tmp, env = fake
    del env["DOCKET_LOG_VKEY"]
    r = run(["deploy", "prod", D1], env, cwd=tmp)
    assert r.returncode == 64
    assert "DOCKET_LOG_VKEY" in r.stderr
    assert called(tmp) is None


def test_missing_binary_exits_64(fake):
    tmp, env = fake
    env["DOCKET_BIN"] = str(tmp / "no-such-docket")
    r = run(["gate", "prod", D1], env)
    assert r.returncode == 64
    assert "no-such-docket" in r.stderr


def test_gate_allow_runs_authorize_and_exits_0(fake):
    tmp, env = fake
    r = run(["gate", "staging", D1, D2], env)
    assert r.returncode == 0, r.stderr
    args = called(tmp)
    assert args[0] == "authorize"
    assert args[args.index("--env") + 1] == "staging"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--digest"] == [D1, D2]
    assert args[args.index("--actor") + 1] == "ci"
    assert "ALLOW" in r.stdout
    # The connection settings reach docket through its own variables.
    seen = (tmp / "env").read_text()
    assert "DOCKET_SERVER=https://docket.example:7443" in seen
    assert "::error" not in r.stdout


def test_gate_deny_exits_1_prints_reason_and_writes_json(fake):
    tmp, env = fake
    env["FAKE_VERDICT"] = "deny"
    out = tmp / "decision.json"
    env["DOCKET_JSON_OUT"] = str(out)
    r = run(["gate", "prod", D1], env)
    assert r.returncode == 1
    assert "DENY" in r.stdout or "deny" in r.stdout
    assert "needs 2 approvals" in r.stdout
    assert json.loads(out.read_text())["verdict"] == "deny"
    # Not in GitHub Actions: no workflow commands.
    assert "::error" not in r.stdout


def test_json_out_is_removed_when_no_decision_comes_back(fake):
    tmp, env = fake
    out = tmp / "decision.json"
    out.write_text('{"verdict": "allow"}')
    env["DOCKET_JSON_OUT"] = str(out)
    env["DOCKET_BIN"] = str(tmp / "failing-docket")
    (tmp / "failing-docket").write_text(
        "#!/bin/sh\necho 'error: connecting to https://x: transport error' >&2\nexit 1\n")
    (tmp / "failing-docket").chmod(0o755)
    r = run(["gate", "prod", D1], env)
    assert r.returncode == 1
    assert not out.exists()
    assert "transport error" in r.stderr


def test_github_annotation_and_step_summary(fake):
    tmp, env = fake
    summary = tmp / "summary.md"
    env.update(FAKE_VERDICT="deny", GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary))
    r = run(["gate", "prod", D1], env)
    assert r.returncode == 1
    errors = [line for line in r.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == 1 and "needs 2 approvals" in errors[0], r.stdout
    md = summary.read_text()
    assert "DENY" in md and "`prod`" in md and "needs 2 approvals" in md


def test_step_summary_without_github_actions_has_no_annotations(fake):
    tmp, env = fake
    summary = tmp / "summary.md"
    env.update(FAKE_VERDICT="allow", GITHUB_STEP_SUMMARY=str(summary))
    r = run(["gate", "staging", D1], env)
    assert r.returncode == 0
    assert "ALLOW" in summary.read_text()
    assert "::" not in r.stdout


def test_deploy_runs_docket_deploy_without_actor(fake):
    tmp, env = fake
    r = run(["deploy", "prod", D1], env)
    assert r.returncode == 0, r.stderr
    args = called(tmp)
    assert args[:3] == ["deploy", "--env", "prod"]
    assert "--actor" not in args
    assert args[args.index("--digest") + 1] == D1
    env["FAKE_VERDICT"] = "deny"
    assert run(["deploy", "prod", D1], env).returncode == 1


def test_report_passes_status_and_digests(fake):
    tmp, env = fake
    r = run(["report", "success", D1, D2], env)
    assert r.returncode == 0, r.stderr
    assert called(tmp) == ["ci", "report", "--status", "success", "--digest", D1, "--digest", D2]
    assert "recorded CI run" in r.stdout
    r = run(["report", "failed"], env)
    assert called(tmp) == ["ci", "report", "--status", "failed"]


def test_docket_exit_code_passes_through(fake):
    tmp, env = fake
    env["FAKE_RC"] = "64"
    r = run(["report", "passed"], env)
    assert r.returncode == 64


# --- GitHub Action -------------------------------------------------------------------


def test_action_declares_the_inputs_and_every_used_input_is_declared():
    action = load(ACTION)
    declared = set(action["inputs"])
    assert declared == EXPECTED_INPUTS
    for name, spec in action["inputs"].items():
        assert spec.get("description", "").strip(), f"input {name} is not documented"
    assert action["inputs"]["command"].get("required") is True
    assert action["inputs"]["docket-bin"].get("default") == ""
    used = {m for e in EXPR.findall(ACTION.read_text()) for m in INPUT_REF.findall(e)}
    assert used, "action.yml uses no inputs"
    assert used <= declared, f"undeclared inputs used: {used - declared}"
    assert declared <= used, f"declared inputs never used: {declared - used}"


def _eval(expr, inputs, env, action_path):
    """Evaluates the `a || b` expressions action.yml uses; anything else fails."""
    for operand in (o.strip() for o in expr.split("||")):
        if operand.startswith("inputs."):
            v = inputs.get(operand[len("inputs."):], "")
        elif operand.startswith("env."):
            v = env.get(operand[len("env."):], "")
        elif operand == "github.action_path":
            v = str(action_path)
        elif operand == "github.event.before":
            v = env.get("TEST_EVENT_BEFORE", "")
        elif operand == "github.event.pull_request.base.sha":
            v = env.get("TEST_EVENT_BASE", "")
        elif operand == "github.event.repository.default_branch":
            v = env.get("TEST_DEFAULT_BRANCH", "")
        else:
            raise AssertionError(f"unexpected expression in action.yml: {expr!r}")
        if v:
            return v
    return ""


def _run_action(inputs, job_env, tmp_env):
    """Runs action.yml's step as the runner would: env evaluated, run under bash."""
    action = load(ACTION)
    assert action["runs"]["using"] == "composite"
    steps = action["runs"]["steps"]
    assert len(steps) == 1
    step = steps[0]
    assert step["shell"] == "bash"
    defaults = {k: str(v.get("default", "")) for k, v in action["inputs"].items()}
    values = {**defaults, **inputs}
    env = dict(tmp_env)
    env.update(job_env)
    for k, v in step["env"].items():
        env[k] = EXPR.sub(lambda m: _eval(m.group(1), values, job_env, ACTION.parent), str(v))
    assert "${{" not in step["run"], "inputs must reach the script as env, not spliced into it"
    return subprocess.run(["bash", "-c", step["run"]], env=env, capture_output=True,
                          text=True, timeout=60)


def test_action_runs_docket_ci_sh_with_the_command_input(fake):
    tmp, env = fake
    step = load(ACTION)["runs"]["steps"][0]
    assert "${{ github.action_path }}/../docket-ci.sh" in json.dumps(step)
    assert (ACTION.parent / ".." / "docket-ci.sh").resolve() == SCRIPT
    cmd_vars = [k for k, v in step["env"].items() if str(v).strip() == "${{ inputs.command }}"]
    assert cmd_vars and any(f"${v}" in step["run"] for v in cmd_vars)

    conn = {k: v for k, v in env.items() if k.startswith("DOCKET_")}
    base = {k: v for k, v in env.items() if not k.startswith("DOCKET_")}
    inputs = {
        "command": "gate", "environment": "prod", "digests": f"{D1}\n  {D2} ",
        "server": conn["DOCKET_SERVER"], "key": conn["DOCKET_KEY"], "signer": "ci",
        "ca": conn["DOCKET_CA"], "cert": conn["DOCKET_CERT"],
        "cert-key": conn["DOCKET_CERT_KEY"], "log-vkey": conn["DOCKET_LOG_VKEY"],
        "docket-bin": conn["DOCKET_BIN"],
    }
    r = _run_action(inputs, {}, base)
    assert r.returncode == 0, r.stderr
    args = called(tmp)
    assert args[0] == "authorize" and args[args.index("--env") + 1] == "prod"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--digest"] == [D1, D2]
    seen = (tmp / "env").read_text()
    for k in ("DOCKET_SERVER", "DOCKET_KEY", "DOCKET_CA", "DOCKET_CERT", "DOCKET_CERT_KEY",
              "DOCKET_LOG_VKEY"):
        assert f"{k}={conn[k]}\n" in seen, k

    # Connection settings left out fall back to the job's DOCKET_* variables,
    # docket-bin to DOCKET_BIN too (and docket-ci.sh to docket on PATH).
    bin_ = {"docket-bin": conn["DOCKET_BIN"]}
    r = _run_action({"command": "report", "status": "success", "digests": D1}, conn, base)
    assert r.returncode == 0, r.stderr
    assert called(tmp) == ["ci", "report", "--status", "success", "--digest", D1]

    # A denial fails the step; an unknown command is a usage error.
    r = _run_action({"command": "deploy", "environment": "prod", "digests": D1, **bin_},
                    conn, {**base, "FAKE_VERDICT": "deny"})
    assert r.returncode == 1
    assert called(tmp)[:3] == ["deploy", "--env", "prod"]
    r = _run_action({"command": "promote", **bin_}, conn, base)
    assert r.returncode == 64

    # ingest: the push's commits, from github.event.before; or the range input.
    gh = {**conn, "GITHUB_ACTIONS": "true", "GITHUB_SHA": C1, "GITHUB_REPOSITORY": "acme/app",
          "GITHUB_SERVER_URL": "https://github.com"}
    first, second = _two_commits(tmp / "app")
    r = _run_action({"command": "ingest", **bin_},
                    {**gh, "GITHUB_SHA": second, "TEST_EVENT_BEFORE": first,
                     "DOCKET_REPO": str(tmp / "app")}, base)
    assert r.returncode == 0, r.stderr
    assert called(tmp) == ["git", "ingest", "--repo", str(tmp / "app"),
                           "--range", f"{first}..{second}", "--repository", "github.com/acme/app"]
    # In a pull request's pipeline: its commits over the base.
    r = _run_action({"command": "ingest", **bin_},
                    {**gh, "GITHUB_SHA": second, "TEST_EVENT_BEFORE": second,
                     "TEST_EVENT_BASE": first, "DOCKET_REPO": str(tmp / "app")}, base)
    assert r.returncode == 0, r.stderr
    assert called(tmp)[4:6] == ["--range", f"{first}..{second}"]
    r = _run_action({"command": "ingest", "range": "v1..v2", **bin_}, gh, base)
    assert r.returncode == 0, r.stderr
    assert called(tmp)[4:6] == ["--range", "v1..v2"]
    # open: this commit and the digests, for the comma-separated environments
    # (C1 is in no clone, so the job binds the tip alone, by its choice).
    r = _run_action({"command": "open", "change": "gh-7", "environment": "staging, prod",
                     "digests": D1, **bin_}, {**gh, "DOCKET_DANGEROUS_TIP_ONLY": "true"}, base)
    assert r.returncode == 0, r.stderr
    assert called(tmp) == ["change", "open", "--id", "gh-7", "--commit", C1, "--digest", D1,
                           "--env", "staging", "--env", "prod",
                           "--repository", "github.com/acme/app"]
    # approve: pinned to what was reviewed.
    r = _run_action({"command": "approve", "change": "gh-7", "digests": f"{C1} {D1}",
                     **bin_}, gh, base)
    assert r.returncode == 0, r.stderr
    assert called(tmp) == ["approve", "gh-7", "--seen", C1, "--seen", D1]


def test_example_workflow_uses_the_action():
    wf = load(WORKFLOW)
    assert set(wf["jobs"]) >= {"build", "deploy-staging", "deploy-prod"}
    declared = set(load(ACTION)["inputs"])
    commands = {}
    for job, i, step in workflow_steps(wf):
        uses = step.get("uses", "")
        if "clients/ci" in uses or uses.startswith("./"):
            target = (REPO / uses).resolve()
            assert target == ACTION.parent, f"{job} step {i}: {uses} is not the action"
            assert (target / "action.yml").is_file()
            w = step.get("with", {})
            assert set(w) <= declared, f"{job}: unknown inputs {set(w) - declared}"
            commands.setdefault(job, []).append((w["command"], w.get("environment")))
            # A local action needs the repository checked out first.
            before = [s.get("uses", "") for s in wf["jobs"][job]["steps"][:i]]
            assert any(u.startswith("actions/checkout") for u in before), job
    assert [c for c, _ in commands["build"]] == ["ingest", "report", "open"]
    assert ("open", "staging,prod") in commands["build"]
    checkout = next(s for s in wf["jobs"]["build"]["steps"]
                    if s.get("uses", "").startswith("actions/checkout"))
    assert checkout.get("with", {}).get("fetch-depth") == 0, "ingest needs the history"
    assert commands["deploy-staging"] == [("gate", "staging"), ("deploy", "staging")]
    assert commands["deploy-prod"] == [("gate", "prod"), ("deploy", "prod")]
    needs = lambda j: wf["jobs"][j].get("needs", [])  # noqa: E731
    assert "build" in needs("deploy-staging")
    assert "deploy-staging" in needs("deploy-prod")


def test_example_approve_workflow_signs_with_the_reviewers_own_key():
    wf = load(APPROVE_WF)
    on = wf.get("on", wf.get(True))
    assert "workflow_dispatch" in on and "change" in on["workflow_dispatch"]["inputs"]
    job = wf["jobs"]["approve"]
    # Only the environment of the person who started it, which only they release.
    assert job["environment"] == "docket-approver-${{ github.actor }}"
    steps = [s for s in job["steps"] if "clients/ci" in s.get("uses", "")]
    assert len(steps) == 1
    assert (REPO / steps[0]["uses"]).resolve() == ACTION.parent
    w = steps[0]["with"]
    assert set(w) <= set(load(ACTION)["inputs"])
    assert w["command"] == "approve" and "inputs.change" in w["change"]
    text = APPROVE_WF.read_text()
    # Names of the reviewer's own, never the pipeline's: a repository
    # secret would stand in for a missing environment secret.
    assert "secrets.DOCKET_APPROVER_KEY_PEM" in text and w["signer"] == "${{ vars.DOCKET_APPROVER }}"
    assert "secrets.DOCKET_KEY_PEM" not in text and "vars.DOCKET_SIGNER" not in text
    for name, _, step in workflow_steps(wf):
        assert "secrets." not in step.get("run", ""), name
    # The set-up step stops before anything is signed when either is empty.
    setup = next(s for _, _, s in workflow_steps(wf) if "KEY_PEM" in s.get("env", {}))
    for missing in ("KEY_PEM", "APPROVER"):
        env = {"PATH": os.environ["PATH"], "GITHUB_ACTOR": "mallory", "KEY_PEM": "k",
               "APPROVER": "alice", missing: ""}
        r = subprocess.run(["bash", "-c", setup["run"]], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 1 and "nothing was signed" in r.stdout, (missing, r)


def test_example_workflow_writes_secrets_to_files_and_never_echoes_them():
    text = WORKFLOW.read_text()
    wf = load(WORKFLOW)
    assert wf.get("on", wf.get(True)), "no trigger"
    for secret in ("DOCKET_KEY_PEM", "DOCKET_CERT_PEM", "DOCKET_CERT_KEY_PEM", "DOCKET_CA_PEM"):
        assert f"secrets.{secret}" in text
    for job, _, step in workflow_steps(wf):
        run_ = step.get("run", "")
        assert "secrets." not in run_, f"{job}: a secret spliced into a script"


# --- GitLab CI -------------------------------------------------------------------------


def test_gitlab_template_defines_the_hidden_jobs():
    t = load(TEMPLATE)
    for job, cmd in ((".docket-report", "report"), (".docket-gate", "gate"),
                     (".docket-deploy", "deploy"), (".docket-open", "open")):
        assert job in t
        script = " ".join(t[job]["script"])
        assert "docket-ci.sh" in script or "DOCKET_CI_SCRIPT" in script
        assert re.search(rf'"\$DOCKET_CI_SCRIPT" {cmd}\b', script), script
        assert "DOCKET_DIGESTS" in script
    for job, cmd in ((".docket-ingest", "ingest"), (".docket-approve", "approve")):
        assert re.search(rf'"\$DOCKET_CI_SCRIPT" {cmd}\b', " ".join(t[job]["script"]))
    assert str(t[".docket-ingest"]["variables"]["GIT_DEPTH"]) == "0"
    assert "DOCKET_STATUS" in " ".join(t[".docket-report"]["script"])
    for job in (".docket-gate", ".docket-deploy"):
        assert "DOCKET_ENVIRONMENT" in " ".join(t[job]["script"])
    script_default = t[".docket-base"]["variables"]["DOCKET_CI_SCRIPT"]
    assert (REPO / script_default).resolve() == SCRIPT
    assert t[".docket-base"]["before_script"]


def test_gitlab_example_includes_the_template_and_extends_its_jobs():
    t = load(TEMPLATE)
    ex = load(GL_EXAMPLE)
    includes = ex["include"] if isinstance(ex["include"], list) else [ex["include"]]
    locals_ = [(REPO / i["local"]).resolve() for i in includes if "local" in i]
    assert TEMPLATE in locals_
    keywords = {"include", "stages", "variables", "default", "workflow", "image", "services"}
    jobs = {k: v for k, v in ex.items() if k not in keywords and not k.startswith(".")}
    extended = set()
    for name, job in jobs.items():
        assert job.get("stage") in ex["stages"], f"{name}: stage {job.get('stage')!r}"
        if "extends" in job:
            parents = job["extends"] if isinstance(job["extends"], list) else [job["extends"]]
            for p in parents:
                assert p in t, f"{name} extends {p}, which the template does not define"
                extended.add(p)
        for line in job.get("script", []):
            if isinstance(line, Reference):
                assert line[0] in t and line[1] in t[line[0]], f"{name}: !reference {line}"
        for need in job.get("needs", []):
            need = need["job"] if isinstance(need, dict) else need
            assert need in jobs, f"{name} needs {need}, which is not a job"
    assert extended == {".docket-ingest", ".docket-report", ".docket-open", ".docket-approve",
                        ".docket-gate", ".docket-deploy"}
    approve = jobs["approve-change"]
    assert approve["when"] == "manual"
    assert approve["environment"]["name"] == "approve/$GITLAB_USER_LOGIN"
    docket_jobs = [n for n, j in jobs.items() if "extends" in j]
    assert len(docket_jobs) < len(jobs), "the example should build something"
    # The build hands the digest on through a dotenv report.
    assert any(j.get("artifacts", {}).get("reports", {}).get("dotenv") for j in jobs.values())
    envs = {j.get("variables", {}).get("DOCKET_ENVIRONMENT") or j.get("environment", {}).get("name")
            for j in jobs.values() if j.get("extends") in (".docket-gate", ".docket-deploy")}
    assert envs == {"staging", "prod"}


def _gitlab_job_script(job):
    """before_script + script of a template job, as GitLab would run them."""
    t = load(TEMPLATE)
    spec = t[job]
    base = t[spec["extends"]]
    lines = list(base["before_script"]) + list(spec["script"])
    variables = {**base.get("variables", {}), **spec.get("variables", {})}
    return "\n".join(lines), {k: str(v) for k, v in variables.items()}


def test_gitlab_before_script_writes_base64_secrets_to_files(tmp_path):
    t = load(TEMPLATE)
    pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n"
    env = {
        "PATH": os.environ["PATH"], "TMPDIR": str(tmp_path),
        "DOCKET_KEY_B64": base64.b64encode(pem.encode()).decode(),
        "DOCKET_CA": "/path/of/a/file/variable",
        "DOCKET_BIN": "true",
    }
    script = "\n".join(t[".docket-base"]["before_script"]) + \
        '\nprintf "%s\\n%s\\n" "$DOCKET_KEY" "$DOCKET_CA"'
    r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    key_path, ca = r.stdout.splitlines()
    assert Path(key_path).read_text() == pem
    assert stat.S_IMODE(Path(key_path).stat().st_mode) == 0o600
    assert ca == "/path/of/a/file/variable"  # a File variable is left as GitLab gave it


@pytest.mark.parametrize(
    "job, extra, expect",
    [
        (".docket-gate", {"DOCKET_ENVIRONMENT": "prod"},
         ["authorize", "--env", "prod", "--json", "--digest", D1, "--digest", D2,
          "--actor", "ci"]),
        (".docket-deploy", {"CI_ENVIRONMENT_NAME": "staging"},
         ["deploy", "--env", "staging", "--json", "--digest", D1, "--digest", D2]),
        (".docket-report", {"DOCKET_STATUS": "passed"},
         ["ci", "report", "--status", "passed", "--digest", D1, "--digest", D2]),
        (".docket-report", {"DOCKET_STATUS": "failed"},
         ["ci", "report", "--status", "failed", "--digest", D1, "--digest", D2]),
        (".docket-ingest", {"GITLAB_CI": "true", "CI_COMMIT_SHA": C1, "CI_COMMIT_BEFORE_SHA": C0},
         ["git", "ingest", "--repo", ".", "--range", f"{C0}..{C1}"]),
        (".docket-open", {"CI_COMMIT_SHA": C1, "CI_PIPELINE_ID": "77",
                          "DOCKET_DANGEROUS_TIP_ONLY": "true"},
         ["change", "open", "--id", "gl-77", "--commit", C1, "--digest", D1, "--digest", D2,
          "--env", "staging", "--env", "prod"]),
        (".docket-approve", {"DOCKET_CHANGE": "gl-77", "DOCKET_SUBJECTS": f"{C1} {D1}",
                             "GITLAB_USER_LOGIN": "alice", "DOCKET_APPROVER_KEY_B64": "eA=="},
         ["approve", "gl-77", "--seen", C1, "--seen", D1]),
    ],
)
def test_gitlab_jobs_run_the_script(fake, job, extra, expect):
    tmp, env = fake
    script, variables = _gitlab_job_script(job)
    variables["DOCKET_CI_SCRIPT"] = str(SCRIPT)  # GitLab runs it from the project dir
    key = Path(env.pop("DOCKET_KEY")).read_bytes()
    if job == ".docket-ingest":
        # The push's range is taken only when its start is in the clone.
        first, second = _two_commits(tmp)
        real = {C0: first, C1: second}
        extra = {k: real.get(v, v) for k, v in extra.items()}
        expect = [a.replace(C0, first).replace(C1, second) for a in expect]
    full = {**variables, **env, **extra,
            "DOCKET_KEY_B64": base64.b64encode(key).decode(),
            "DOCKET_DIGESTS": f"{D1} {D2}"}
    r = subprocess.run(["sh", "-c", script], env=full, cwd=tmp, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert called(tmp) == expect
    if "DOCKET_JSON_OUT" in variables:
        assert json.loads((tmp / variables["DOCKET_JSON_OUT"]).read_text())["verdict"] == "allow"


def test_gitlab_approve_signs_as_the_reviewer_not_the_pipeline(fake):
    """Project variables outrank a job's own, so the pipeline's DOCKET_SIGNER
    and DOCKET_KEY(_B64) are present when a reviewer runs the approve job:
    it must sign as the reviewer with the reviewer's key, or not at all."""
    tmp, env = fake
    script, variables = _gitlab_job_script(".docket-approve")
    variables["DOCKET_CI_SCRIPT"] = str(SCRIPT)
    pipeline_key = Path(env.pop("DOCKET_KEY")).read_bytes()
    project = {**env, "DOCKET_SIGNER": "ci",
               "DOCKET_KEY_B64": base64.b64encode(pipeline_key).decode()}
    alice_key = tmp / "alice.key"
    alice_key.write_text("alice's key\n")
    job = {"DOCKET_CHANGE": "gl-77", "GITLAB_USER_LOGIN": "alice"}

    def run_job(extra):
        (tmp / "env").unlink(missing_ok=True)
        (tmp / "args").unlink(missing_ok=True)
        full = {**variables, **project, **job, **extra}
        return subprocess.run(["sh", "-c", script], env=full, cwd=tmp, capture_output=True,
                              text=True, timeout=60)

    r = run_job({"DOCKET_APPROVER_KEY": str(alice_key)})
    assert r.returncode == 0, (r.stdout, r.stderr)
    seen = dict(line.split("=", 1) for line in (tmp / "env").read_text().splitlines())
    assert seen["DOCKET_SIGNER"] == "alice"
    assert Path(seen["DOCKET_KEY"]).read_text() == "alice's key\n"
    assert called(tmp) == ["approve", "gl-77"]

    # The key base64-encoded in a masked variable works the same way.
    b64 = base64.b64encode(b"alice's key\n").decode()
    r = run_job({"DOCKET_APPROVER_KEY_B64": b64, "DOCKET_APPROVER": "alice.smith"})
    assert r.returncode == 0, (r.stdout, r.stderr)
    seen = dict(line.split("=", 1) for line in (tmp / "env").read_text().splitlines())
    assert seen["DOCKET_SIGNER"] == "alice.smith"
    assert Path(seen["DOCKET_KEY"]).read_text() == "alice's key\n"

    # Without a reviewer key nothing is signed, in particular not as ci.
    r = run_job({})
    assert r.returncode == 64, (r.stdout, r.stderr)
    assert "DOCKET_APPROVER_KEY" in r.stderr
    assert called(tmp) is None


def test_gitlab_report_needs_an_explicit_status(fake):
    """A report job that does not say how the build went records nothing: a
    `when: on_failure` job that forgot DOCKET_STATUS must not record a pass."""
    tmp, env = fake
    script, variables = _gitlab_job_script(".docket-report")
    variables["DOCKET_CI_SCRIPT"] = str(SCRIPT)
    key = Path(env.pop("DOCKET_KEY")).read_bytes()
    full = {**variables, **env, "DOCKET_KEY_B64": base64.b64encode(key).decode(),
            "DOCKET_DIGESTS": D1}
    full.pop("DOCKET_STATUS", None)
    r = subprocess.run(["sh", "-c", script], env=full, cwd=tmp, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert "DOCKET_STATUS" in r.stderr, r.stderr
    assert called(tmp) is None or called(tmp) == [], called(tmp)
