#!/usr/bin/env bash
# docket-ci.sh: the one script the GitHub Action (github/action.yml) and the
# GitLab CI template (gitlab/docket.gitlab-ci.yml) call, so the pipeline logic
# lives in one place and runs the same on a laptop.
#
#   docket-ci.sh ingest [A..B]                record the pipeline's commits (docket git ingest)
#   docket-ci.sh report STATUS [DIGEST...]    record a CI run (docket ci report)
#   docket-ci.sh open CHANGE ENVS DIGEST...   open (or amend) the change binding this push's commits
#                                             and DIGESTs for ENVS (docket change open/amend)
#   docket-ci.sh approve CHANGE [SUBJECT...]  approve a change as DOCKET_SIGNER (docket approve)
#   docket-ci.sh gate ENVIRONMENT DIGEST...   ask whether a deploy is allowed (docket authorize)
#   docket-ci.sh deploy ENVIRONMENT DIGEST... record the deploy; Docket decides it (docket deploy)
#
# Settings come only from the environment (see usage below). Exit codes: 0
# allowed / recorded, 1 denied or the server refused, 64 bad usage or
# configuration, 65 the server refused the request as malformed, 77 this
# client or signer may not make the call, 69 the server could not be reached
# (docket's own codes are passed through unchanged).
set -euo pipefail

PROG=docket-ci.sh
BIN="${DOCKET_BIN:-docket}"
ON_GITHUB=false
[[ "${GITHUB_ACTIONS:-}" == "true" ]] && ON_GITHUB=true

usage() {
    cat <<EOF
usage: $PROG ingest [A..B]
       $PROG report STATUS [DIGEST...]
       $PROG open CHANGE ENVIRONMENTS DIGEST...
       $PROG approve CHANGE [SUBJECT...]
       $PROG gate ENVIRONMENT DIGEST...
       $PROG deploy ENVIRONMENT DIGEST...

  ingest  docket git ingest --repo \$DOCKET_REPO (default .): the commits A..B, by default
          those of the pull or merge request over its base (DOCKET_GIT_BASE, which the action
          sets from github.event.pull_request.base.sha; GitLab: CI_MERGE_REQUEST_DIFF_BASE_SHA),
          else the push's (GitLab: CI_COMMIT_BEFORE_SHA..CI_COMMIT_SHA; GitHub:
          DOCKET_GIT_BEFORE, which the action sets from github.event.before, ..GITHUB_SHA),
          else the whole history of the pipeline's commit. Commits already in the log are skipped. Needs
          the history in the clone (actions/checkout with fetch-depth: 0; GitLab
          GIT_DEPTH: 0): segregation of duties needs every commit's author.
  report  docket ci report --status STATUS --digest DIGEST...  (STATUS: passed, failed,
          canceled; GitHub's success/failure/cancelled work too). The commit, run id, URL and
          repository come from the GitHub Actions or GitLab CI variables.
  open    docket change open --id CHANGE --commit C... --digest DIGEST... --env ENV...
          (ENVIRONMENTS comma-separated, e.g. staging,prod), the repository from the CI
          variables, title DOCKET_CHANGE_TITLE and ticket DOCKET_TICKET if set. C: every
          commit of the request or push (the range ingest reads); when no range is known,
          those the default branch does not hold (its whole history for a commit on it), and
          exit 64 when the clone cannot tell; the authors of every bound commit may not
          approve. If CHANGE
          exists, amends it to these subjects plus the commits it already binds (earlier
          approvals become stale); if it already binds exactly them, does nothing.
  approve docket approve CHANGE, signed with DOCKET_KEY as DOCKET_SIGNER (a person's key,
          e.g. from a protected environment only they can release). SUBJECTs (commits,
          digests): what the approver reviewed; the approval is refused unless they are
          exactly the subjects of a revision. Without them: the change's current subjects.
  gate    docket authorize --env ENVIRONMENT --digest DIGEST... --actor \$DOCKET_SIGNER
          (records nothing). Exit 0 allow, 1 deny.
  deploy  docket deploy --env ENVIRONMENT --digest DIGEST... (records the deploy, allowed or
          not). Exit 0 allow, 1 deny.

DIGEST is an artifact digest: sha256: and 64 lowercase hex digits.

Environment:
  DOCKET_SERVER     server URL, e.g. https://docket.example.com:7443   (required)
  DOCKET_KEY        the pipeline principal's Ed25519 key file (PEM)    (required)
  DOCKET_SIGNER     the pipeline principal's id, e.g. ci               (required)
  DOCKET_CA         CA certificate of the server's certificate (PEM)
  DOCKET_CERT       client certificate (PEM)
  DOCKET_CERT_KEY   client certificate's private key (PEM)
  DOCKET_LOG_VKEY   the log's verifier key, to check receipts (all but gate)
  DOCKET_DATA       data directory for defaults of the above (default: docket-data)
  DOCKET_BIN        the docket binary (default: docket)
  DOCKET_JSON_OUT   gate/deploy: also write the decision as JSON to this file
  DOCKET_CHANGE     gate/deploy: the change the deployment is for (--change), so that no
                    other change binding the same digests is considered in its place
  DOCKET_REPO       ingest, open: the git repository (default: .)
  DOCKET_GIT_BASE   the pull request's base commit (the action sets it)
  DOCKET_GIT_DEFAULT_BRANCH  open: the default branch (the action sets it; GitLab:
                    CI_DEFAULT_BRANCH), found as origin/<branch> or a local branch
  DOCKET_GIT_DEFAULT_COMMIT  open: the default branch's commit id, used alone (the GitLab
                    template fetches the branch and sets it; anything but a commit id of
                    the clone stops open)
  DOCKET_DANGEROUS_TIP_ONLY  open: true binds the pipeline's commit alone when no range is
                    known, so the authors of earlier commits could approve (it warns)
  DOCKET_GIT_BEFORE ingest: the commit before the push (GitHub's github.event.before)
  DOCKET_ALLOWED_SIGNERS  ingest: allowed-signers file of trusted SSH signing keys
  DOCKET_OPENPGP_KEYRING  ingest: keyring of trusted OpenPGP certificates (gpg --export --armor)
  DOCKET_CHANGE_TITLE, DOCKET_TICKET   open: the change's title and ticket
  DOCKET_COMMENT    approve: a comment recorded with the approval
  GITHUB_STEP_SUMMARY  GitHub Actions: a Markdown summary is appended to it

Exit codes: 0 allowed/recorded, 1 denied or failed, 64 bad usage or configuration,
65 the server refused the request as malformed, 77 this client or signer may not make
the call, 69 the server could not be reached (nothing was decided; retry).
EOF
}

# GitHub workflow commands need %, CR and LF escaped.
gh_escape() {
    local s="$1"
    s="${s//'%'/%25}"
    s="${s//$'\r'/%0D}"
    s="${s//$'\n'/%0A}"
    printf '%s' "$s"
}

# An ::error:: annotation under GitHub Actions; nothing elsewhere.
annotate_error() {
    if $ON_GITHUB; then
        printf '::error title=%s::%s\n' "$(gh_escape "$1")" "$(gh_escape "$2")"
    fi
}

summary() {
    if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then
        printf '%s\n' "$@" >>"$GITHUB_STEP_SUMMARY"
    fi
}

# --- arguments and configuration --------------------------------------------

errors=()
cmd="${1:-}"
[[ $# -gt 0 ]] && shift

case "$cmd" in
    -h | --help | help)
        usage
        exit 0
        ;;
    report)
        if [[ $# -lt 1 || -z "$1" ]]; then
            errors+=("report: missing STATUS (passed, failed or canceled)")
        fi
        ;;
    ingest)
        if [[ $# -gt 1 ]]; then
            errors+=("ingest: at most one range A..B")
        elif [[ $# -eq 1 && "$1" != *..* ]]; then
            errors+=("ingest: '$1' is not a range A..B")
        fi
        ;;
    open)
        if [[ $# -lt 1 || -z "$1" ]]; then
            errors+=("open: missing CHANGE (the change id, e.g. gh-4242)")
        elif [[ $# -lt 2 || -z "$2" ]]; then
            errors+=("open: missing ENVIRONMENTS (comma-separated, e.g. staging,prod)")
        elif [[ $# -lt 3 ]]; then
            errors+=("open: missing DIGEST (at least one sha256:... artifact digest)")
        fi
        if [[ -z "${GITHUB_SHA:-${CI_COMMIT_SHA:-}}" ]]; then
            errors+=("open: neither GITHUB_SHA nor CI_COMMIT_SHA is set: which commit does the change bind?")
        fi
        ;;
    approve)
        if [[ $# -lt 1 || -z "$1" ]]; then
            errors+=("approve: missing CHANGE (the change id)")
        fi
        for a in "${@:2}"; do
            if ! [[ "$a" =~ ^(sha256:[0-9a-f]{64}|[0-9a-f]{40}|[0-9a-f]{64})$ ]]; then
                errors+=("'$a' is not a subject (a commit SHA, or sha256: and 64 lowercase hex digits)")
            fi
        done
        ;;
    gate | deploy)
        if [[ $# -lt 1 || -z "$1" ]]; then
            errors+=("$cmd: missing ENVIRONMENT")
        elif [[ $# -lt 2 ]]; then
            errors+=("$cmd: missing DIGEST (at least one sha256:... artifact digest)")
        fi
        ;;
    "")
        errors+=("missing command: ingest, report, open, approve, gate or deploy")
        ;;
    *)
        errors+=("unknown command '$cmd': expected ingest, report, open, approve, gate or deploy")
        ;;
esac

# After STATUS (report) or ENVIRONMENT (gate, deploy): the digests.
case "$cmd" in
    report | gate | deploy) digests=("${@:2}") ;;
    open) digests=("${@:3}") ;;
    *) digests=() ;;
esac
for d in "${digests[@]+"${digests[@]}"}"; do
    if ! [[ "$d" =~ ^sha256:[0-9a-f]{64}$ ]]; then
        errors+=("'$d' is not an artifact digest (sha256: and 64 lowercase hex digits)")
    fi
done

for v in DOCKET_SERVER DOCKET_KEY DOCKET_SIGNER; do
    if [[ -z "${!v:-}" ]]; then
        errors+=("$v is not set")
    fi
done

# Files docket would read: checked here so a missing secret file is named
# before anything is sent. (docket itself fails with exit 64 on these too,
# but for report and deploy only after the event has been appended.)
check_file() {
    local var="$1" path="$2"
    if [[ ! -f "$path" || ! -r "$path" ]]; then
        errors+=("$var: cannot read '$path'")
    fi
}
for v in DOCKET_CA DOCKET_CERT DOCKET_CERT_KEY; do
    [[ -n "${!v:-}" ]] && check_file "$v" "${!v}"
done
if [[ "$cmd" != gate ]]; then
    [[ -n "${DOCKET_KEY:-}" ]] && check_file DOCKET_KEY "$DOCKET_KEY"
    if [[ -n "${DOCKET_LOG_VKEY:-}" ]]; then
        check_file DOCKET_LOG_VKEY "$DOCKET_LOG_VKEY"
    elif [[ ! -r "${DOCKET_DATA:-docket-data}/log.vkey" ]]; then
        errors+=("DOCKET_LOG_VKEY is not set and ${DOCKET_DATA:-docket-data}/log.vkey does not exist: $cmd needs the log's verifier key to check its receipt")
    fi
fi

if [[ ${#errors[@]} -eq 0 ]] && ! command -v "$BIN" >/dev/null 2>&1; then
    errors+=("docket binary '$BIN' not found (set DOCKET_BIN or put docket on PATH)")
fi

if [[ ${#errors[@]} -gt 0 ]]; then
    for e in "${errors[@]}"; do
        echo "$PROG: error: $e" >&2
    done
    echo "run '$PROG --help' for the commands and the DOCKET_* variables" >&2
    annotate_error "Docket ${cmd:-CI}" "$(printf '%s\n' "${errors[@]}")"
    exit 64
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/docket-ci.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# The last line docket wrote to stderr, without its "error: " prefix.
last_error() {
    local line
    line="$(grep -v '^[[:space:]]*$' "$tmp/err" | tail -n 1 || true)"
    printf '%s' "${line#error: }"
}

# --- report, ingest, open and approve ---------------------------------------

# Runs docket with the given arguments, passing its output through: its last
# line goes to the step summary; on failure, annotates (GitHub) and
# summarises with docket's last error line.
run_docket() {
    local title="$1"
    shift
    local rc=0
    "$BIN" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    cat "$tmp/out"
    cat "$tmp/err" >&2
    if [[ $rc -eq 0 ]]; then
        summary "**Docket:** $(tail -n 1 "$tmp/out")"
    else
        annotate_error "Docket $title" "docket ${*:1:2} failed (exit $rc): $(last_error)"
        summary "**Docket:** $title failed (exit $rc): $(last_error)"
    fi
    return "$rc"
}

do_report() {
    local status="$1"
    shift
    local args=(ci report --status "$status")
    local d
    for d in "$@"; do args+=(--digest "$d"); done
    run_docket "CI report" "${args[@]}"
}

# The repository's name as docket ci report records it: host/owner/name.
ci_repository() {
    if [[ "${GITHUB_ACTIONS:-}" == true && -n "${GITHUB_REPOSITORY:-}" ]]; then
        local server="${GITHUB_SERVER_URL:-https://github.com}"
        server="${server#*://}"
        printf '%s/%s' "${server%/}" "$GITHUB_REPOSITORY"
    elif [[ "${GITLAB_CI:-}" == true && -n "${CI_PROJECT_PATH:-}" ]]; then
        printf '%s/%s' "${CI_SERVER_HOST:-gitlab.com}" "$CI_PROJECT_PATH"
    fi
}

# The commit the branch pointed at before the push, when it is known and in
# the clone; nothing otherwise, with a warning on standard error saying why
# (a new branch, no push information, no git, a shallow clone or a force push).
push_before() {
    local before="${DOCKET_GIT_BEFORE:-${CI_COMMIT_BEFORE_SHA:-}}"
    if [[ -z "$before" || "$before" =~ ^0+$ ]]; then
        echo "$PROG: no push range is known (a new branch, or no push information)" >&2
    elif ! command -v git >/dev/null 2>&1; then
        echo "$PROG: git is not installed in this job's image, so the push's range $before..${GITHUB_SHA:-${CI_COMMIT_SHA:-HEAD}} cannot be read" >&2
    elif ! git -C "${DOCKET_REPO:-.}" cat-file -e "$before^{commit}" 2>/dev/null; then
        echo "$PROG: the push's previous commit $before is not in the clone (a shallow clone, or a force push?)" >&2
    else
        printf '%s' "$before"
    fi
}

# The commit a pull or merge request's work starts from: DOCKET_GIT_BASE
# (the GitHub action sets it from github.event.pull_request.base.sha), else
# GitLab's CI_MERGE_REQUEST_DIFF_BASE_SHA. Prints nothing outside a request,
# or, saying why, when it is not in the clone.
request_base() {
    local base="${DOCKET_GIT_BASE:-${CI_MERGE_REQUEST_DIFF_BASE_SHA:-}}"
    if [[ -z "$base" ]]; then
        return 0
    elif ! command -v git >/dev/null 2>&1; then
        echo "$PROG: git is not installed in this job's image, so the request's base $base cannot be read" >&2
    elif ! git -C "${DOCKET_REPO:-.}" cat-file -e "$base^{commit}" 2>/dev/null; then
        echo "$PROG: the request's base commit $base is not in the clone (a shallow clone?), so the push's range is used instead" >&2
    else
        printf '%s' "$base"
    fi
}

# The range of commits this pipeline's change is made of, or nothing (with
# the reason on stderr): in a pull or merge request, every commit of the
# request over its base (commits the base branch brought in by a merge are
# not the request's work, and their authors may still approve); else the
# commits the push brought.
work_range() {
    local commit="${GITHUB_SHA:-${CI_COMMIT_SHA:-HEAD}}" base before
    base="$(request_base)"
    if [[ -n "$base" ]]; then
        printf '%s' "$base..$commit"
        return 0
    fi
    before="$(push_before)"
    [[ -n "$before" ]] && printf '%s' "$before..$commit"
    return 0
}

# The default branch in the clone: DOCKET_GIT_DEFAULT_COMMIT when set, else DOCKET_GIT_DEFAULT_BRANCH (the action sets it from
# github.event.repository.default_branch) or GitLab's CI_DEFAULT_BRANCH, as
# origin's or a local branch. Fails, saying why.
default_ref() {
    local repo="${DOCKET_REPO:-.}" b="${DOCKET_GIT_DEFAULT_BRANCH:-${CI_DEFAULT_BRANCH:-}}" r
    # The commit this job fetched (the GitLab template's), used alone and
    # only as a full commit id: a reused build directory can hold stale or
    # planted refs, and a ref name can resolve to more than one of them.
    local c="${DOCKET_GIT_DEFAULT_COMMIT:-}"
    if [[ -n "$c" ]]; then
        if [[ "$c" =~ ^[0-9a-f]{40}([0-9a-f]{24})?$ ]] &&
            git -C "$repo" cat-file -e "$c^{commit}" 2>/dev/null; then
            printf '%s' "$c"
            return 0
        fi
        echo "$PROG: DOCKET_GIT_DEFAULT_COMMIT ${c:0:80} is not a commit id of the clone (the default branch's fetch failed?)" >&2
        return 1
    fi
    if [[ -z "$b" ]]; then
        echo "$PROG: the repository's default branch is not known (set DOCKET_GIT_DEFAULT_BRANCH)" >&2
        return 1
    fi
    for r in "refs/remotes/origin/$b" "refs/heads/$b"; do
        if git -C "$repo" rev-parse -q --verify "$r^{commit}" >/dev/null; then
            printf '%s' "$r"
            return 0
        fi
    done
    echo "$PROG: the default branch $b is not in the clone (fetch it first: git fetch origin $b)" >&2
    return 1
}

# With no push or request range (a new branch's first push, a manual run,
# a force push): the commits of $1 that the default branch does not hold,
# one per line, which is the branch's own work; the whole history of $1
# when $1 is on the default branch (its first push). Only the default
# branch counts: any other ref (a branch or tag anyone may push) could hide
# commits. Fails, saying why, when the clone cannot tell (no git, a shallow
# clone, the commit or the default branch missing).
branch_commits() {
    local repo="${DOCKET_REPO:-.}" tip base
    if ! command -v git >/dev/null 2>&1; then
        echo "$PROG: git is not installed in this job's image, so the branch's commits cannot be listed" >&2
        return 1
    fi
    if [[ "$(git -C "$repo" rev-parse --is-shallow-repository 2>/dev/null)" != false ]]; then
        echo "$PROG: the clone is shallow (or no repository), so the branch's commits cannot be listed" >&2
        return 1
    fi
    if ! tip="$(git -C "$repo" rev-parse -q --verify "$1^{commit}")"; then
        echo "$PROG: commit $1 is not in the clone" >&2
        return 1
    fi
    base="$(default_ref)" || return 1
    if git -C "$repo" merge-base --is-ancestor "$tip" "$base"; then
        echo "$PROG: $tip is on the default branch ($base), so no commits of its own can be told from older ones: binding its whole history" >&2
        git -C "$repo" rev-list "$tip" --
    else
        echo "$PROG: binding the commits of $tip that the default branch ($base) does not hold" >&2
        git -C "$repo" rev-list "$tip" --not "$base" --
    fi
}

do_ingest() {
    local args=(git ingest --repo "${DOCKET_REPO:-.}")
    local commit="${GITHUB_SHA:-${CI_COMMIT_SHA:-HEAD}}"
    local range
    if [[ $# -eq 1 ]]; then
        args+=(--range "$1")
    elif range="$(work_range)" && [[ -n "$range" ]]; then
        # A request's commits, or a push's.
        args+=(--range "$range")
    else
        # No range to take (push_before said why): everything reachable
        # from the commit (already recorded ones are skipped).
        echo "$PROG: reading the whole history of $commit instead" >&2
        args+=(--ref "$commit")
    fi
    local repo
    repo="$(ci_repository)"
    [[ -n "$repo" ]] && args+=(--repository "$repo")
    run_docket "git ingest" "${args[@]}"
}

# The commits change $1 binds now, one per line; nothing if it does not
# exist. `docket change show` prints JSON with one "commits" array. Any other
# failure (server unreachable, no permission) stops: amending without the
# commits already bound would unbind them, and their authors could approve.
change_commits() {
    local rc=0
    "$BIN" change show "$1" >"$tmp/show" 2>"$tmp/show-err" || rc=$?
    if [[ $rc -ne 0 ]]; then
        grep -q "NotFound" "$tmp/show-err" && return 0
        cat "$tmp/show-err" >&2
        echo "$PROG: open: cannot read change $1 (exit $rc), so the commits it binds are unknown; not opening or amending it" >&2
        return "$rc"
    fi
    tr -d ' \n' <"$tmp/show" |
        sed -n 's/.*"commits":\[\([^]]*\)\].*/\1/p' | tr ',' '\n' | tr -d '"' |
        { grep -E '^[0-9a-f]{40}([0-9a-f]{24})?$' || true; }
}

do_open() {
    local id="$1" envs="$2"
    shift 2
    local commit="${GITHUB_SHA:-${CI_COMMIT_SHA:-}}"
    # The change binds every commit of the request or push, not only its
    # tip: a change binds the commits it names, and their authors are the
    # ones who may not approve it (docs/policy.md, "Exclusions").
    # Without the range (push_before said why), the branch's own commits;
    # binding the tip alone would let the author of an earlier commit of
    # the push approve their own code: stop, unless the job opts in to that
    # knowingly.
    local commits=("$commit") range listed line
    local tip_only="the change would bind $commit only, not the commits before it, so their authors could approve it"
    local how="run it in a pull or merge request pipeline, or give the clone the history and the default branch (fetch-depth 0; on GitLab GIT_DEPTH 0, and git fetch origin \$CI_DEFAULT_BRANCH), or set DOCKET_DANGEROUS_TIP_ONLY=true to bind the tip alone"
    range="$(work_range)"
    if [[ -n "$range" ]]; then
        if listed="$(git -C "${DOCKET_REPO:-.}" rev-list "$range" 2>"$tmp/rev-err")"; then
            commits=()
            while read -r line; do
                [[ -n "$line" ]] && commits+=("$line")
            done <<<"$listed"
            [[ ${#commits[@]} -eq 0 ]] && commits=("$commit")
        elif [[ "${DOCKET_DANGEROUS_TIP_ONLY:-}" == true ]]; then
            echo "$PROG: warning: git rev-list $range failed ($(tail -n 1 "$tmp/rev-err")); DOCKET_DANGEROUS_TIP_ONLY is set: $tip_only" >&2
        else
            echo "$PROG: open: git rev-list $range failed ($(tail -n 1 "$tmp/rev-err")): $tip_only; not opening it. Fix the clone, or set DOCKET_DANGEROUS_TIP_ONLY=true to bind the tip alone" >&2
            return 64
        fi
    elif [[ "${DOCKET_DANGEROUS_TIP_ONLY:-}" == true ]]; then
        echo "$PROG: warning: DOCKET_DANGEROUS_TIP_ONLY is set: $tip_only" >&2
    elif listed="$(branch_commits "$commit")" && [[ -n "$listed" ]]; then
        commits=()
        while read -r line; do
            [[ -n "$line" ]] && commits+=("$line")
        done <<<"$listed"
    else
        echo "$PROG: open: $tip_only; not opening it. To open it, $how" >&2
        return 64
    fi
    # A later pipeline for an existing change keeps the commits it already
    # binds: their code is still in what is deployed.
    local bound
    bound="$(change_commits "$id")" || return $?
    while read -r line; do
        [[ -z "$line" || " ${commits[*]} " == *" $line "* ]] || commits+=("$line")
    done <<<"$bound"
    if [[ ${#commits[@]} -gt 256 ]]; then
        echo "$PROG: open: the change would bind ${#commits[@]} commits; a change binds at most 256 (run it where the push's range is known, or open it with docket change open and a narrower set)" >&2
        return 64
    fi
    local bind=(--id "$id")
    local c d e
    for c in "${commits[@]}"; do bind+=(--commit "$c"); done
    for d in "$@"; do bind+=(--digest "$d"); done
    IFS=',' read -r -a env_list <<<"$envs"
    for e in "${env_list[@]}"; do
        e="${e// /}"
        [[ -n "$e" ]] && bind+=(--env "$e")
    done
    local extra=()
    local repo
    repo="$(ci_repository)"
    [[ -n "$repo" ]] && extra+=(--repository "$repo")
    [[ -n "${DOCKET_CHANGE_TITLE:-}" ]] && extra+=(--title "$DOCKET_CHANGE_TITLE")
    [[ -n "${DOCKET_TICKET:-}" ]] && extra+=(--ticket "$DOCKET_TICKET")
    local rc=0
    "$BIN" change open "${bind[@]}" "${extra[@]+"${extra[@]}"}" >"$tmp/out" 2>"$tmp/err" || rc=$?
    if [[ $rc -ne 0 ]] && grep -q "already exists" "$tmp/err"; then
        # A later run for the same change: the new commit and artifacts are
        # a new revision, which earlier approvals do not cover.
        echo "change $id exists; amending it to this pipeline's commit and artifacts"
        rc=0
        "$BIN" change amend "${bind[@]}" >"$tmp/out" 2>"$tmp/err" || rc=$?
        if [[ $rc -ne 0 ]] && grep -q "binds the same subjects and environments" "$tmp/err"; then
            echo "change $id already binds commit $commit and these artifacts for $envs; nothing to do"
            summary "**Docket:** change $id already binds this commit and these artifacts"
            return 0
        fi
    fi
    cat "$tmp/out"
    cat "$tmp/err" >&2
    if [[ $rc -eq 0 ]]; then
        summary "**Docket:** $(tail -n 1 "$tmp/out")"
    else
        annotate_error "Docket open change" "docket change open/amend failed (exit $rc): $(last_error)"
        summary "**Docket:** opening change $id failed (exit $rc): $(last_error)"
    fi
    return "$rc"
}

do_approve() {
    local id="$1"
    shift
    local args=(approve "$id")
    local x
    for x in "$@"; do args+=(--seen "$x"); done
    [[ -n "${DOCKET_COMMENT:-}" ]] && args+=(--comment "$DOCKET_COMMENT")
    run_docket "approve" "${args[@]}"
}

# --- gate and deploy --------------------------------------------------------

# Renders a decision (JSON from --json) as text (mode text) or Markdown
# (mode markdown). Needs python3; callers fall back without it.
render() {
    python3 - "$@" <<'PY'
import json, sys

path, mode, title, what, env, actor = sys.argv[1:7]
d = json.load(open(path))
allow = d.get("verdict") == "allow"
verdict = "ALLOW" if allow else "DENY"
rule = f'rule "{d["rule"]}"' if d.get("rule") else "no rule"
if mode == "text":
    out = [f'{verdict} {what}: {rule}, policy version {d.get("policy_version")}']
    if d.get("change_id"):
        out.append(f'  change {d["change_id"]} (revision {d.get("change_revision")})')
    out += [f"  - {r}" for r in d.get("reasons", [])]
    out += [f'  counted:     {c["approver"]} ({c["roles"]}) [entry {c["index"]}]' for c in d.get("counted", [])]
    out += [f'  not counted: {c["approver"]} - {c["reason"]} [entry {c["index"]}]' for c in d.get("not_counted", [])]
    out += [f'  obligation:  {o["description"]}, due {o["due"]}, not by {o["not_by"]}' for o in d.get("obligations", [])]
    if d.get("recorded"):
        out.append(f'  recorded at entry {d.get("index")}')
    print("\n".join(out))
else:
    icon = "\u2705" if allow else "\u274c"
    out = [f"### {icon} Docket {title}: {verdict} for `{env}`", "",
           "| | |", "|---|---|",
           f"| Subjects | {what} |",
           f"| Actor | `{actor}` |",
           f"| Rule | {rule} |",
           f'| Policy version | {d.get("policy_version")} |']
    if d.get("change_id"):
        out.append(f'| Change | `{d["change_id"]}` (revision {d.get("change_revision")}) |')
    if d.get("recorded"):
        out.append(f'| Recorded | entry {d.get("index")} |')
    out.append("")
    for r in d.get("reasons", []):
        out.append(f"- {r}")
    for c in d.get("counted", []):
        out.append(f'- counted: {c["approver"]} ({c["roles"]})')
    for c in d.get("not_counted", []):
        out.append(f'- not counted: {c["approver"]}: {c["reason"]}')
    for o in d.get("obligations", []):
        out.append(f'- obligation: {o["description"]}, due {o["due"]}')
    print("\n".join(out))
PY
}

do_decide() {
    local sub="$1" env="$2"
    shift 2
    local title=gate
    [[ "$sub" == deploy ]] && title=deploy
    local args=("$sub" --env "$env" --json)
    local d
    for d in "$@"; do args+=(--digest "$d"); done
    [[ "$sub" == authorize ]] && args+=(--actor "$DOCKET_SIGNER")
    [[ -n "${DOCKET_CHANGE:-}" ]] && args+=(--change "$DOCKET_CHANGE")

    local rc=0
    "$BIN" "${args[@]}" >"$tmp/out" 2>"$tmp/err" || rc=$?

    local have_json=false have_py=false
    if grep -q '"verdict"' "$tmp/out" 2>/dev/null; then have_json=true; fi
    if command -v python3 >/dev/null 2>&1; then have_py=true; fi
    local what="deploy $* to $env"

    if $have_json; then
        if $have_py && render "$tmp/out" text "$title" "$what" "$env" "$DOCKET_SIGNER" >"$tmp/text" 2>/dev/null; then
            cat "$tmp/text"
        else
            cat "$tmp/out"
        fi
    else
        cat "$tmp/out"
    fi
    cat "$tmp/err" >&2

    if [[ -n "${DOCKET_JSON_OUT:-}" ]]; then
        if $have_json; then
            cp "$tmp/out" "$DOCKET_JSON_OUT"
        else
            # No decision came back: leave no stale one behind.
            rm -f "$DOCKET_JSON_OUT"
        fi
    fi

    local verdict=unknown
    if $have_json; then
        if grep -q '"verdict": *"allow"' "$tmp/out"; then verdict=ALLOW; else verdict=DENY; fi
    fi

    if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then
        if $have_json && $have_py && render "$tmp/out" markdown "$title" "\`$*\`" "$env" "$DOCKET_SIGNER" >"$tmp/md" 2>/dev/null; then
            summary "$(cat "$tmp/md")" ""
        elif $have_json; then
            summary "### Docket $title: $verdict for \`$env\`" "" '```json' "$(cat "$tmp/out")" '```' ""
        else
            summary "### Docket $title: no decision for \`$env\` (exit $rc)" "" "$(last_error)" ""
        fi
    fi

    if [[ $rc -ne 0 ]]; then
        if [[ "$verdict" == DENY ]]; then
            annotate_error "Docket $title: DENY for $env" "$(last_error)"
        else
            annotate_error "Docket $title failed for $env (exit $rc)" "$(last_error)"
        fi
    fi
    return "$rc"
}

rc=0
case "$cmd" in
    ingest) do_ingest "$@" || rc=$? ;;
    report) do_report "$@" || rc=$? ;;
    open) do_open "$@" || rc=$? ;;
    approve) do_approve "$@" || rc=$? ;;
    gate) do_decide authorize "$@" || rc=$? ;;
    deploy) do_decide deploy "$@" || rc=$? ;;
esac
exit "$rc"
