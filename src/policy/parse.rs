//! The policy file: TOML, parsed strictly. Every refusal names the line and
//! the reason; unknown fields and contradictions are refused.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde::Deserialize;
use serde_spanned::Spanned;

use super::{Permission, glob_match};

/// A parsed, consistent policy document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Who may do what, by role.
    pub permissions: BTreeMap<Permission, BTreeSet<String>>,
    /// Approvals a policy change needs, and from which roles.
    pub policy_changes: ApprovalRule,
    /// How long an identity change may wait for its second identity
    /// administrator (`[identity_changes] expire_after`; `None`: for ever).
    pub identity_change_expiry_secs: Option<i64>,
    /// What an unmatched request gets.
    pub unmatched_allows: bool,
    /// Deadline of the post-hoc review a break-glass opens.
    pub break_glass_review_secs: i64,
    pub rules: Vec<Rule>,
    pub freezes: Vec<Freeze>,
}

/// N distinct approvers from some roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalRule {
    pub approvals: u32,
    pub roles: BTreeSet<String>,
    /// How long a proposal may wait for its approvals (`None`: for ever).
    pub expire_after_secs: Option<i64>,
}

/// One rule: what it matches and what it requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub description: String,
    pub environments: Vec<String>,
    pub repositories: Vec<String>,
    pub kinds: Vec<String>,
    pub namespaces: Vec<String>,
    pub actions: Vec<String>,
    pub approvals: u32,
    /// Only principals with one of these roles count (empty: any role).
    pub approver_roles: BTreeSet<String>,
    /// At least `count` counted approvers must hold `role`.
    pub require_roles: Vec<(String, u32)>,
    pub ci_passed: bool,
    /// With `ci_passed`: only CI runs these principals reported count
    /// (empty: runs by any principal with the `report` permission).
    pub ci_reporters: BTreeSet<String>,
    pub promoted_from: Option<String>,
    pub max_approval_age_secs: Option<i64>,
    /// Every commit of the change's code must be recorded as signed, with a
    /// verified signature, by a principal: its author is then a key, not
    /// a line of free text.
    pub signed_commits: bool,
}

/// A time range in which matching deploys are denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Freeze {
    pub name: String,
    pub start: Timestamp,
    pub end: Timestamp,
    /// As written, for messages: "2027-01-04T00:00 Europe/Berlin".
    pub end_text: String,
    pub environments: Vec<String>,
}

/// Why a policy document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("policy line {line}: {message}")]
pub struct PolicyError {
    pub line: usize,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<u32>,
    #[serde(default)]
    permissions: Option<Spanned<RawPermissions>>,
    #[serde(default)]
    policy_changes: Option<Spanned<RawApprovalRule>>,
    #[serde(default)]
    identity_changes: Option<Spanned<RawIdentityChanges>>,
    #[serde(default)]
    defaults: Option<Spanned<RawDefaults>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    freeze: Vec<Spanned<RawFreeze>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPermissions {
    register_principals: Option<Vec<String>>,
    change_roles: Option<Vec<String>>,
    propose_policy: Option<Vec<String>>,
    approve_policy: Option<Vec<String>>,
    open_change: Option<Vec<String>>,
    approve: Option<Vec<String>>,
    break_glass: Option<Vec<String>>,
    report: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovalRule {
    approvals: u32,
    roles: Vec<String>,
    expire_after: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentityChanges {
    expire_after: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    unmatched: Option<Spanned<String>>,
    break_glass_review: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    environments: Vec<String>,
    #[serde(default)]
    repositories: Vec<String>,
    #[serde(default)]
    kinds: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    actions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoleCount {
    role: String,
    count: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default, rename = "match")]
    matches: RawMatch,
    approvals: Option<Spanned<u32>>,
    approver_roles: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    require_roles: Vec<Spanned<RawRoleCount>>,
    #[serde(default)]
    ci_passed: bool,
    ci_reporters: Option<Spanned<Vec<String>>>,
    promoted_from: Option<Spanned<String>>,
    max_approval_age: Option<Spanned<String>>,
    #[serde(default)]
    signed_commits: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFreeze {
    name: Spanned<String>,
    start: Spanned<String>,
    end: Spanned<String>,
    zone: Spanned<String>,
    #[serde(default)]
    environments: Vec<String>,
}

/// The IANA database compiled into the binary. `jiff::tz::TimeZone::get`
/// would prefer `$TZDIR` or the machine's `/usr/share/zoneinfo`, so two
/// machines (a server and an auditor's verifier) could place a freeze
/// window's edges an hour apart.
pub(crate) fn bundled_zones() -> &'static jiff::tz::TimeZoneDatabase {
    static DB: std::sync::LazyLock<jiff::tz::TimeZoneDatabase> =
        std::sync::LazyLock::new(jiff::tz::TimeZoneDatabase::bundled);
    &DB
}

/// Longest refusal message: they quote what they refuse, which can be a
/// name of any length.
const MAX_MESSAGE: usize = 1024;

fn clip(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("… (cut)");
    }
    message
}

fn line_of(text: &str, offset: usize) -> usize {
    // Bytes, not a str slice: an offset inside a character must not panic.
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Bounds on documents being introduced, so that checking one (the
/// `covers` comparisons are quadratic in rules and in pattern lengths)
/// stays fast, and a policy cannot lock itself against change.
pub(crate) const MAX_RULES: usize = 256;
/// Patterns in one `match` field.
pub(crate) const MAX_PATTERNS: usize = 64;
/// Bytes in one pattern.
pub(crate) const MAX_PATTERN_BYTES: usize = 256;
/// `approvals` of a rule, and `policy_changes.approvals`.
pub(crate) const MAX_APPROVALS: u32 = 100;
/// Shortest `expire_after` of a new document.
const MIN_EXPIRY_SECS: i64 = 3600;
/// Longest `defaults.break_glass_review` of a new document: a review due
/// later than a year after the break-glass is no deadline an auditor
/// would accept.
const MAX_BREAK_GLASS_REVIEW_SECS: i64 = 366 * 86_400;

/// Why a role named in a policy is refused: no principal could hold it.
fn unholdable(role: &str) -> String {
    format!("role {role:?} could never be held: a principal's roles are 1..=64 of a-z 0-9 - _")
}

fn check_patterns(m: &RawMatch) -> Result<(), String> {
    for (field, list) in [
        ("match.environments", &m.environments),
        ("match.repositories", &m.repositories),
        ("match.kinds", &m.kinds),
        ("match.namespaces", &m.namespaces),
        ("match.actions", &m.actions),
    ] {
        check_list(field, list)?;
    }
    Ok(())
}

/// A list of name patterns (`field` names it): bounded, and every pattern
/// one that some name could match. Names (environments, repositories,
/// kinds, namespaces, actions) are 1..=256 bytes with no whitespace or
/// control characters, so a pattern with those would never match.
fn check_list(field: &str, list: &[String]) -> Result<(), String> {
    if list.len() > MAX_PATTERNS {
        return Err(format!(
            "{field} lists {} patterns; at most {MAX_PATTERNS}",
            list.len()
        ));
    }
    for (i, p) in list.iter().enumerate() {
        check_name(&format!("{field}[{i}]"), p)?;
    }
    Ok(())
}

/// One name or pattern (see [`check_list`]).
fn check_name(field: &str, p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err(format!("{field} is empty"));
    }
    if p.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "{field} is {} bytes; at most {MAX_PATTERN_BYTES}",
            p.len()
        ));
    }
    if p.chars().any(char::is_control) {
        return Err(format!("{field} contains a control character"));
    }
    if p.chars().any(char::is_whitespace) {
        return Err(format!(
            "{field} {p:?} contains whitespace, which no name has, so it could never match"
        ));
    }
    Ok(())
}

/// Whether some rule matches requests for the environment `env`.
fn some_rule_matches(rules: &[Rule], env: &str) -> bool {
    rules
        .iter()
        .any(|r| r.environments.is_empty() || r.environments.iter().any(|q| glob_match(q, env)))
}

/// A pattern of stars only: it matches every name.
fn matches_all(p: &str) -> bool {
    p.bytes().all(|b| b == b'*')
}

/// True when `earlier` matches every request `later` matches (checked per
/// field; a field left empty matches anything). Conservative: a pattern of
/// `later` counts as covered only when `earlier` lists it as written, or
/// lists a glob that matches it and it has no `*` of its own.
fn covers(earlier: &Rule, later: &Rule) -> bool {
    // A pattern of stars covers an empty list too: a request with a value
    // for the field matches it, and one without stops the search at the
    // earlier rule (the field is unknown), so the later one is never asked.
    let field = |e: &[String], l: &[String]| {
        e.is_empty()
            || (l.is_empty() && e.iter().any(|q| matches_all(q)))
            || (!l.is_empty()
                && l.iter().all(|p| {
                    e.iter().any(|q| {
                        q == p || matches_all(q) || (!p.contains('*') && super::glob_match(q, p))
                    })
                }))
    };
    field(&earlier.environments, &later.environments)
        && field(&earlier.repositories, &later.repositories)
        && field(&earlier.kinds, &later.kinds)
        && field(&earlier.namespaces, &later.namespaces)
        && field(&earlier.actions, &later.actions)
}

/// Parses "90s", "30m", "12h", "7d" into seconds.
fn duration_secs(s: &str) -> Result<i64, String> {
    // The unit is one ASCII letter; anything else (a multi-byte last
    // character included) is refused before the string is split.
    if !s.is_ascii() {
        return Err(format!("{s:?} is not a duration like 90s, 30m, 12h or 7d"));
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    // Digits only: `i64::from_str` would also take a sign ("+7d"), which
    // the documented syntax (and so an independent verifier) does not.
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a duration like 90s, 30m, 12h or 7d"));
    }
    let n: i64 = num.parse().map_err(|_| format!("{s:?} is too long"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?} is not a duration like 90s, 30m, 12h or 7d")),
    };
    if n <= 0 {
        return Err(format!("{s:?} must be positive"));
    }
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Whether the time of day of a date-time (the text from its `T` or space
/// on, `T23:59:60...`) has second 60.
pub(crate) fn names_leap_second(time_of_day: &str) -> bool {
    time_of_day.as_bytes().get(6..9) == Some(b":60")
}

/// `YYYY-MM-DD`, optionally followed by `T` (or `t` or a space) and
/// `hh:mm`, `hh:mm:ss` or `hh:mm:ss.f` with 1 to 9 fraction digits.
fn local_form(text: &str) -> bool {
    let b = text.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let date = b.len() >= 10
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10);
    if !date {
        return false;
    }
    let t = &b[10..];
    if t.is_empty() {
        return true;
    }
    let time = t.len() >= 6
        && matches!(t[0], b'T' | b't' | b' ')
        && digits(11..13)
        && t[3] == b':'
        && digits(14..16);
    if !time {
        return false;
    }
    match &t[6..] {
        [] => true,
        [b':', s1, s2, rest @ ..] if s1.is_ascii_digit() && s2.is_ascii_digit() => match rest {
            [] => true,
            [b'.', frac @ ..] => {
                (1..=9).contains(&frac.len()) && frac.iter().all(u8::is_ascii_digit)
            }
            _ => false,
        },
        _ => false,
    }
}

/// A freeze window's local date-time as an instant. A new document
/// (`strict`) may not name a time that its zone skips or repeats (a
/// daylight-saving change), since the window's edge would then be a guess;
/// a recorded one keeps the reading it was recorded under (the earlier of
/// a repeated time, the later of a skipped one).
fn civil(
    text: &str,
    zone: &jiff::tz::TimeZone,
    field: &str,
    strict: bool,
) -> Result<Timestamp, String> {
    // jiff reads a civil date-time with a UTC offset or a [zone] annotation
    // and drops them, which would move the window's edge without a word.
    // A new document must name the zone's local time only.
    // Looked for after the date, whose own '-' (and a negative year's) are
    // not offsets.
    // Only the documented forms: jiff also reads others (a signed year, the
    // basic form 20261220T2359 with a leap second in it read as :59).
    let form = |text: &str| {
        format!(
            "{field} {text:?} is not written like 2026-12-20 or 2026-12-20T00:00 (optionally with :ss and a fraction), the only forms a freeze takes"
        )
    };
    if strict && !local_form(text.get(..10).unwrap_or(text)) {
        return Err(form(text));
    }
    // Everything after the date `YYYY-MM-DD`, where jiff would also read
    // an annotation on a date alone ("2026-12-20[Asia/Tokyo]").
    let after_date = text.get(10..).unwrap_or("");
    if strict
        && after_date
            .chars()
            .any(|c| matches!(c, '+' | '-' | '\u{2212}' | '[' | 'Z' | 'z'))
    {
        return Err(format!(
            "{field} {text:?} carries a UTC offset or a time zone; write the local time in the freeze's zone (zone = \"{}\") alone, like 2026-12-20T00:00",
            zone.iana_name().unwrap_or("…")
        ));
    }
    if strict && !local_form(text) {
        return Err(form(text));
    }
    // jiff reads a leap second (:60) as :59 of the same minute, which would
    // move the edge by a second without a word.
    if strict && names_leap_second(after_date) {
        return Err(format!(
            "{field} {text:?} names a leap second (:60), which this zone's clock does not show; write :59 or the next minute"
        ));
    }
    // Parsed after the checks above, so that a new document's `Z` or
    // offset gets their message rather than jiff's.
    let dt: jiff::civil::DateTime = text
        .parse()
        .map_err(|e| format!("{field} {text:?} is not a date-time like 2026-12-20T00:00: {e}"))?;
    let ambiguous = zone.to_ambiguous_zoned(dt);
    if strict && ambiguous.is_ambiguous() {
        let what = match ambiguous.offset() {
            jiff::tz::AmbiguousOffset::Gap { .. } => "does not exist",
            _ => "happens twice",
        };
        return Err(format!(
            "{field} {text:?} {what} in {} (a daylight-saving change); pick a time that happens exactly once",
            zone.iana_name().unwrap_or("this zone")
        ));
    }
    ambiguous
        .compatible()
        .map(|z| z.timestamp())
        .map_err(|e| format!("{field} {text:?}: {e}"))
}

impl Policy {
    /// Parses and checks a recorded policy document: one already in a log
    /// (folded on every start and by verifiers) or read back from state.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        Self::parse_with(text, false)
    }

    /// Parses a document about to be recorded (at `init`, or proposed):
    /// [`Policy::parse`] plus the contradictions refused since version 1 of
    /// the language was first recorded (a role that may not approve named
    /// as an approver, a rule an earlier rule always matches first, a
    /// duplicate freeze name, a `promoted_from` environment the rule itself
    /// matches and no earlier rule decides, role requirements asking for
    /// more people than `approvals`). Recorded documents are not re-checked for
    /// those, so logs and bundles written before keep folding and verifying.
    pub fn parse_new(text: &str) -> Result<Policy, PolicyError> {
        Self::parse_with(text, true)
    }

    fn parse_with(text: &str, strict: bool) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let mut message = e.message().to_owned();
            // toml says "duplicate key" without the key; its span has it.
            if message == "duplicate key"
                && let Some(key) = e.span().and_then(|s| text.get(s)).map(str::trim)
                && !key.is_empty()
            {
                message = format!("duplicate key {key}");
            }
            PolicyError {
                line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
                message: clip(message),
            }
        })?;
        let err = |offset: usize, message: String| PolicyError {
            line: line_of(text, offset),
            message: clip(message),
        };
        // A duration field: its value in seconds, or a refusal naming it.
        let duration_at = |field: &str, d: &Spanned<String>| {
            duration_secs(d.get_ref()).map_err(|m| err(d.span().start, format!("{field}: {m}")))
        };
        // How long a waiting change may wait: long enough for a second
        // person to act, or no change of that kind could ever complete (for
        // policy changes, the policy could never be changed again).
        let expiry_at = |field: &str, d: &Spanned<String>| {
            let secs = duration_at(field, d)?;
            if strict && secs < MIN_EXPIRY_SECS {
                return Err(err(
                    d.span().start,
                    format!(
                        "{field}: {:?} is shorter than 1h: the approvals a change needs could hardly ever all arrive in time",
                        d.get_ref()
                    ),
                ));
            }
            Ok(secs)
        };
        if *raw.version.get_ref() != 1 {
            return Err(err(
                raw.version.span().start,
                format!(
                    "unsupported policy version {}; this Docket reads version 1",
                    raw.version.get_ref()
                ),
            ));
        }

        let mut permissions: BTreeMap<Permission, BTreeSet<String>> = BTreeMap::new();
        let permissions_at = raw.permissions.as_ref().map_or(0, |p| p.span().start);
        let p = raw.permissions.map(|p| p.into_inner()).unwrap_or_default();
        let p_break_glass_given = p.break_glass.is_some();
        let given = [
            (Permission::RegisterPrincipals, p.register_principals),
            (Permission::ChangeRoles, p.change_roles),
            (Permission::ProposePolicy, p.propose_policy),
            (Permission::ApprovePolicy, p.approve_policy),
            (Permission::OpenChange, p.open_change),
            (Permission::Approve, p.approve),
            (Permission::BreakGlass, p.break_glass),
            (Permission::Report, p.report),
        ];
        for (perm, roles) in given {
            // Unset permissions default to the admin role only.
            let roles = roles.unwrap_or_else(|| vec![crate::event::ADMIN_ROLE.to_owned()]);
            if strict && let Some(bad) = roles.iter().find(|r| !crate::event::valid_role(r)) {
                return Err(err(
                    permissions_at,
                    format!("permissions.{}: {}", perm.key(), unholdable(bad)),
                ));
            }
            permissions.insert(perm, roles.into_iter().collect());
        }

        let policy_changes = match raw.policy_changes {
            Some(pc) => {
                let start = pc.span().start;
                let pc = pc.into_inner();
                if pc.approvals == 0 {
                    return Err(err(start, "policy_changes.approvals must be at least 1: no policy change may take effect unapproved".into()));
                }
                if strict && pc.approvals > MAX_APPROVALS {
                    return Err(err(
                        start,
                        format!(
                            "policy_changes.approvals = {} is more than {MAX_APPROVALS}: the policy could never be changed again",
                            pc.approvals
                        ),
                    ));
                }
                if strict && let Some(bad) = pc.roles.iter().find(|r| !crate::event::valid_role(r))
                {
                    return Err(err(
                        start,
                        format!("policy_changes.roles: {}", unholdable(bad)),
                    ));
                }
                if pc.roles.is_empty() {
                    return Err(err(
                        start,
                        "policy_changes.roles is empty: no one could approve a policy change"
                            .into(),
                    ));
                }
                let may = &permissions[&Permission::ApprovePolicy];
                if strict && let Some(role) = pc.roles.iter().find(|r| !may.contains(*r)) {
                    return Err(err(
                        start,
                        format!(
                            "policy_changes.roles names {role:?}, which does not hold the approve_policy permission ([permissions] approve_policy = {may:?}), so its approvals of a policy could never be given"
                        ),
                    ));
                }
                let expire_after_secs = pc
                    .expire_after
                    .as_ref()
                    .map(|e| expiry_at("policy_changes.expire_after", e))
                    .transpose()?;
                ApprovalRule {
                    approvals: pc.approvals,
                    roles: pc.roles.into_iter().collect(),
                    expire_after_secs,
                }
            }
            None => ApprovalRule {
                approvals: 2,
                roles: permissions[&Permission::ApprovePolicy].clone(),
                expire_after_secs: None,
            },
        };
        // A policy no one may propose to replace, or whose replacement no
        // one may approve, could never be changed again.
        if strict && permissions[&Permission::ProposePolicy].is_empty() {
            return Err(err(
                permissions_at,
                "permissions.propose_policy is empty: no one could propose a policy change, so this policy could never be changed".into(),
            ));
        }
        if strict && policy_changes.roles.is_empty() {
            return Err(err(
                permissions_at,
                "permissions.approve_policy is empty and no [policy_changes] table names roles: no one could approve a policy change, so this policy could never be changed".into(),
            ));
        }

        let identity_change_expiry_secs = raw
            .identity_changes
            .and_then(|i| i.into_inner().expire_after)
            .map(|e| expiry_at("identity_changes.expire_after", &e))
            .transpose()?;

        let mut unmatched_allows = false;
        let mut break_glass_review_secs = 24 * 3600;
        if let Some(d) = raw.defaults {
            let d = d.into_inner();
            if let Some(u) = d.unmatched {
                unmatched_allows = match u.get_ref().as_str() {
                    "deny" => false,
                    "allow" => true,
                    other => {
                        return Err(err(
                            u.span().start,
                            format!(
                                "defaults.unmatched must be \"deny\" or \"allow\", not {other:?}"
                            ),
                        ));
                    }
                };
            }
            if let Some(r) = d.break_glass_review {
                break_glass_review_secs = duration_at("defaults.break_glass_review", &r)?;
                if strict && break_glass_review_secs > MAX_BREAK_GLASS_REVIEW_SECS {
                    return Err(err(
                        r.span().start,
                        format!(
                            "defaults.break_glass_review {:?} is longer than 366d, the longest review deadline a break-glass may have",
                            r.get_ref()
                        ),
                    ));
                }
            }
        }

        // Roles whose approvals can be given at all.
        let approvers = &permissions[&Permission::Approve];
        let mut rules: Vec<Rule> = Vec::new();
        let mut rule_lines = Vec::new();
        let mut promoted_at: Vec<Option<usize>> = Vec::new();
        let mut names = BTreeSet::new();
        if strict && let Some(extra) = raw.rule.get(MAX_RULES) {
            return Err(err(
                extra.span().start,
                format!("a policy may have at most {MAX_RULES} rules"),
            ));
        }
        for r in raw.rule {
            let start = r.span().start;
            let r = r.into_inner();
            let name = r.name.get_ref().clone();
            // Refusals point at the field at fault (`offset`), or at the
            // rule's `[[rule]]` line.
            let at = |offset: usize, m: String| err(offset, format!("rule {name:?}: {m}"));
            if name.is_empty() {
                return Err(err(
                    r.name.span().start,
                    "rule name must not be empty".into(),
                ));
            }
            if strict && (name.len() > MAX_PATTERN_BYTES || name.chars().any(char::is_control)) {
                return Err(err(
                    r.name.span().start,
                    format!(
                        "rule name {name:?} must be at most {MAX_PATTERN_BYTES} bytes without control characters"
                    ),
                ));
            }
            if strict {
                check_patterns(&r.matches).map_err(|m| at(start, m))?;
            }
            if !names.insert(name.clone()) {
                return Err(err(
                    r.name.span().start,
                    format!("a rule named {name:?} is already defined"),
                ));
            }
            let (approvals, approvals_at) = r
                .approvals
                .as_ref()
                .map_or((0, start), |a| (*a.get_ref(), a.span().start));
            if strict && approvals > MAX_APPROVALS {
                return Err(at(
                    approvals_at,
                    format!("approvals = {approvals} is more than {MAX_APPROVALS}"),
                ));
            }
            let roles_given = r.approver_roles.is_some();
            let roles_at = r.approver_roles.as_ref().map_or(start, |v| v.span().start);
            let approver_roles: BTreeSet<String> = r
                .approver_roles
                .map(Spanned::into_inner)
                .unwrap_or_default()
                .into_iter()
                .collect();
            if strict
                && let Some(bad) = approver_roles.iter().find(|r| !crate::event::valid_role(r))
            {
                return Err(at(roles_at, format!("approver_roles: {}", unholdable(bad))));
            }
            if strict && roles_given && approvals == 0 {
                return Err(at(
                    roles_at,
                    "approver_roles is set but the rule requires no approvals".into(),
                ));
            }
            if roles_given && approver_roles.is_empty() && approvals > 0 {
                return Err(at(
                    roles_at,
                    format!(
                        "needs {approvals} approvals but approver_roles is empty, so no one could approve"
                    ),
                ));
            }
            let mut require_roles = Vec::new();
            for rc in r.require_roles {
                let rc_at = rc.span().start;
                let rc = rc.into_inner();
                if strict && !crate::event::valid_role(&rc.role) {
                    return Err(at(
                        rc_at,
                        format!("require_roles: {}", unholdable(&rc.role)),
                    ));
                }
                if rc.count == 0 {
                    return Err(at(
                        rc_at,
                        format!("require_roles for {:?} has count 0", rc.role),
                    ));
                }
                if !approver_roles.is_empty() && !approver_roles.contains(&rc.role) {
                    return Err(at(
                        rc_at,
                        format!(
                            "requires approvals from role {:?}, which is not among approver_roles {:?}",
                            rc.role, approver_roles
                        ),
                    ));
                }
                if strict && !approvers.contains(&rc.role) {
                    return Err(at(
                        rc_at,
                        format!(
                            "requires approvals from role {:?}, which does not hold the approve permission, so none could ever count",
                            rc.role
                        ),
                    ));
                }
                if strict && require_roles.iter().any(|(r, _)| *r == rc.role) {
                    return Err(at(
                        rc_at,
                        format!(
                            "require_roles names role {:?} twice; give it once with the total count",
                            rc.role
                        ),
                    ));
                }
                require_roles.push((rc.role, rc.count));
            }
            // A person fills one role requirement only, so the requirements
            // together need as many people as their counts add up to.
            let total: u64 = require_roles.iter().map(|(_, c)| u64::from(*c)).sum();
            if strict && require_roles.len() > 1 && total > u64::from(approvals) {
                return Err(at(
                    approvals_at,
                    format!(
                        "approvals = {approvals} but require_roles asks for {total} people in all ({}), and a person fills one role requirement only; raise approvals to at least {total}",
                        require_roles
                            .iter()
                            .map(|(r, c)| format!("{c} from {r:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            let largest = require_roles.iter().map(|(_, c)| *c).max().unwrap_or(0);
            if largest > approvals {
                return Err(at(
                    approvals_at,
                    format!(
                        "approvals = {approvals} but require_roles asks for {largest} from one role; raise approvals"
                    ),
                ));
            }
            if strict
                && approvals > 0
                && let Some(role) = approver_roles.iter().find(|r| !approvers.contains(*r))
            {
                return Err(at(
                    roles_at,
                    format!(
                        "approver_roles names {role:?}, which does not hold the approve permission ([permissions] approve = {approvers:?}), so its approvals could never be given"
                    ),
                ));
            }
            // A rule that asks for approvals, CI or signed commits decides
            // on a change.
            if strict
                && (approvals > 0 || r.ci_passed || r.signed_commits)
                && permissions[&Permission::OpenChange].is_empty()
            {
                let needs = if approvals > 0 {
                    format!("approvals = {approvals}")
                } else if r.ci_passed {
                    "ci_passed = true".to_owned()
                } else {
                    "signed_commits = true".to_owned()
                };
                return Err(at(
                    if approvals > 0 { approvals_at } else { start },
                    format!(
                        "{needs} but no role holds the open_change permission ([permissions] open_change = []), so no change could be opened and the rule would deny every request"
                    ),
                ));
            }
            if strict && r.ci_passed && permissions[&Permission::Report].is_empty() {
                return Err(at(
                    start,
                    "ci_passed = true but no role holds the report permission ([permissions] report = []), so no CI run could ever count".into(),
                ));
            }
            if strict && r.signed_commits && permissions[&Permission::Report].is_empty() {
                return Err(at(
                    start,
                    "signed_commits = true but no role holds the report permission ([permissions] report = []), so no commit could ever be recorded, signed or not".into(),
                ));
            }
            if strict && approvals > 0 && approvers.is_empty() {
                return Err(at(
                    approvals_at,
                    format!(
                        "approvals = {approvals} but no role holds the approve permission ([permissions] approve = []), so no approval could ever be given"
                    ),
                ));
            }
            let mut ci_reporters = BTreeSet::new();
            if let Some(list) = r.ci_reporters {
                let list_at = list.span().start;
                let list = list.into_inner();
                if !r.ci_passed {
                    return Err(at(
                        list_at,
                        "ci_reporters is set but the rule does not require ci_passed = true".into(),
                    ));
                }
                if list.is_empty() {
                    return Err(at(
                        list_at,
                        "ci_reporters is empty, so no CI run could ever count; leave it out to count runs by any reporter".into(),
                    ));
                }
                for who in list {
                    if let Err(e) = crate::event::PrincipalId::parse(&who) {
                        return Err(at(list_at, format!("ci_reporters: {e}")));
                    }
                    if !ci_reporters.insert(who.clone()) {
                        return Err(at(list_at, format!("ci_reporters names {who:?} twice")));
                    }
                }
            }
            let promoted_from = r.promoted_from.map(|p| (p.span().start, p.into_inner()));
            if strict && let Some((from_at, from)) = &promoted_from {
                check_name("promoted_from", from).map_err(|m| at(*from_at, m))?;
                if from.contains('*') {
                    return Err(at(
                        *from_at,
                        format!(
                            "promoted_from {from:?} is compared with the environment of earlier deploys as written, so a pattern (*) would never match; name one environment"
                        ),
                    ));
                }
            }
            if let Some((from_at, from)) = &promoted_from
                && r.matches.environments.iter().any(|e| e == from)
            {
                return Err(at(
                    *from_at,
                    format!(
                        "promoted_from {from:?} is also one of the environments the rule matches"
                    ),
                ));
            }
            let max_approval_age_secs = match &r.max_approval_age {
                None => None,
                Some(a) => {
                    let secs = duration_secs(a.get_ref())
                        .map_err(|m| at(a.span().start, format!("max_approval_age: {m}")))?;
                    if approvals == 0 {
                        return Err(at(
                            a.span().start,
                            "max_approval_age is set but the rule requires no approvals".into(),
                        ));
                    }
                    Some(secs)
                }
            };
            let from_at = promoted_from.as_ref().map(|(a, _)| *a);
            let rule = Rule {
                name,
                description: r.description,
                environments: r.matches.environments,
                repositories: r.matches.repositories,
                kinds: r.matches.kinds,
                namespaces: r.matches.namespaces,
                actions: r.matches.actions,
                approvals,
                approver_roles,
                require_roles,
                ci_passed: r.ci_passed,
                ci_reporters,
                promoted_from: promoted_from.map(|(_, p)| p),
                max_approval_age_secs,
                signed_commits: r.signed_commits,
            };
            // The first matching rule decides, so a rule that an earlier
            // one matches whenever it matches could never decide anything.
            if strict
                && let Some((earlier, line)) = rules
                    .iter()
                    .zip(&rule_lines)
                    .find(|(e, _)| covers(e, &rule))
            {
                return Err(err(
                    start,
                    format!(
                        "rule {:?} can never apply: rule {:?} (line {line}) comes first and matches every request it matches",
                        rule.name, earlier.name
                    ),
                ));
            }
            // A deploy to `from` that this rule decides could never be
            // allowed: it would need an earlier deploy to `from`. Fine when
            // an earlier rule decides every such request instead.
            if strict && let (Some(from), Some(from_at)) = (&rule.promoted_from, from_at) {
                let how = if rule.environments.is_empty() {
                    Some("matches every environment".to_owned())
                } else {
                    rule.environments
                        .iter()
                        .find(|e| glob_match(e, from))
                        .map(|glob| format!("matches it by the pattern {glob:?}"))
                };
                let probe = Rule {
                    environments: vec![from.clone()],
                    ..rule.clone()
                };
                if let Some(how) = how
                    && !rules.iter().any(|e| covers(e, &probe))
                {
                    return Err(err(
                        from_at,
                        format!(
                            "rule {:?}: promoted_from {from:?}, but the rule {how} and no earlier rule decides those requests, so a first deploy to {from:?} could never be allowed; put a rule for {from:?} before it",
                            rule.name
                        ),
                    ));
                }
            }
            rules.push(rule);
            rule_lines.push(line_of(text, start));
            promoted_at.push(from_at);
        }
        // Promotions that wait on each other in a ring: a first deploy to
        // any of them would need an earlier deploy to the next. Refused when
        // the ring is certain: each environment is decided by the first rule
        // whose environments match it, and that rule filters on nothing else
        // (a rule that also filters on repository, kind, namespace or action
        // may let some requests fall through to later rules).
        if strict {
            let env_only = |r: &Rule| {
                r.repositories.is_empty()
                    && r.kinds.is_empty()
                    && r.namespaces.is_empty()
                    && r.actions.is_empty()
            };
            let decider = |env: &str| {
                rules.iter().position(|r| {
                    r.environments.is_empty() || r.environments.iter().any(|p| glob_match(p, env))
                })
            };
            for (first, r) in rules.iter().enumerate() {
                if !env_only(r) {
                    continue;
                }
                let mut ring = vec![first];
                while let Some(from) = &rules[ring[ring.len() - 1]].promoted_from {
                    let Some(next) = decider(from).filter(|n| env_only(&rules[*n])) else {
                        break;
                    };
                    if next == first && ring.len() > 1 {
                        let waits: Vec<String> = ring
                            .iter()
                            .map(|i| {
                                format!(
                                    "rule {:?} waits for a deploy to {:?}",
                                    rules[*i].name,
                                    rules[*i].promoted_from.as_deref().unwrap_or_default()
                                )
                            })
                            .collect();
                        return Err(err(
                            promoted_at[first].unwrap_or(0),
                            format!(
                                "promoted_from makes a ring ({}): a first deploy to any of them could never be allowed; let one environment be deployed to without promotion",
                                waits.join(", ")
                            ),
                        ));
                    }
                    if ring.contains(&next) {
                        break;
                    }
                    ring.push(next);
                }
            }
        }

        if strict
            && !permissions[&Permission::BreakGlass].is_empty()
            && permissions[&Permission::Approve].is_empty()
        {
            return Err(err(
                permissions_at,
                format!(
                    "permissions.break_glass is granted to {:?}{} but no role holds approve ([permissions] approve = []), so no break-glass deployment could ever be reviewed and each would become a violation; set break_glass = [] if no one may break glass",
                    permissions[&Permission::BreakGlass],
                    if p_break_glass_given {
                        ""
                    } else {
                        " (the default when it is not set)"
                    }
                ),
            ));
        }
        // A promotion from an environment no rule decides could never be
        // satisfied: deploys there are denied by default (a typo such as
        // "Staging" beside a rule for "staging").
        if strict && !unmatched_allows {
            for (r, line) in rules.iter().zip(&rule_lines) {
                let Some(from) = &r.promoted_from else {
                    continue;
                };
                if !some_rule_matches(&rules, from) {
                    return Err(PolicyError {
                        line: *line,
                        message: clip(format!(
                            "rule {:?}: promoted_from {from:?} names an environment no rule matches, so deploys there are denied by default and the promotion could never happen; environment names are compared exactly, case included",
                            r.name
                        )),
                    });
                }
            }
        }

        let mut freezes = Vec::new();
        let mut freeze_names = BTreeSet::new();
        for f in raw.freeze {
            let f_at = f.span().start;
            let f = f.into_inner();
            let name = f.name.get_ref().clone();
            let at = |offset: usize, m: String| err(offset, format!("freeze {name:?}: {m}"));
            if strict {
                // The name is what a denial quotes.
                if name.is_empty()
                    || name.len() > MAX_PATTERN_BYTES
                    || name.chars().any(char::is_control)
                {
                    return Err(err(
                        f.name.span().start,
                        format!(
                            "freeze name {name:?} must be 1 to {MAX_PATTERN_BYTES} bytes without control characters"
                        ),
                    ));
                }
                check_list("environments", &f.environments).map_err(|m| at(f_at, m))?;
                // An environment no rule decides is denied anyway (or, with
                // `unmatched = "allow"`, allowed by the default, which a
                // freeze then still stops): a name that no rule's pattern
                // matches is a freeze that could never deny anything.
                if !unmatched_allows
                    && let Some(p) = f
                        .environments
                        .iter()
                        .find(|p| !p.contains('*') && !some_rule_matches(&rules, p))
                {
                    let named: BTreeSet<&str> = rules
                        .iter()
                        .flat_map(|r| r.environments.iter().map(String::as_str))
                        .collect();
                    return Err(at(
                        f_at,
                        format!(
                            "environments names {p:?}, which no rule matches ({}), so requests for it are denied by default and the freeze could never deny one; environment names are compared exactly, case included",
                            named
                                .into_iter()
                                .map(|n| format!("{n:?}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
            if !freeze_names.insert(name.clone()) && strict {
                return Err(err(
                    f.name.span().start,
                    format!("a freeze named {name:?} is already defined"),
                ));
            }
            let zone = bundled_zones().get(f.zone.get_ref()).map_err(|_| {
                at(
                    f.zone.span().start,
                    format!("unknown time zone {:?}", f.zone.get_ref()),
                )
            })?;
            let start = civil(f.start.get_ref(), &zone, "start", strict)
                .map_err(|m| at(f.start.span().start, m))?;
            let end = civil(f.end.get_ref(), &zone, "end", strict)
                .map_err(|m| at(f.end.span().start, m))?;
            if end <= start {
                return Err(at(
                    f.end.span().start,
                    format!(
                        "ends ({}) {} it starts ({})",
                        f.end.get_ref(),
                        if end == start { "when" } else { "before" },
                        f.start.get_ref()
                    ),
                ));
            }
            freezes.push(Freeze {
                end_text: format!("{} {}", f.end.get_ref(), f.zone.get_ref()),
                name,
                start,
                end,
                environments: f.environments,
            });
        }
        Ok(Policy {
            permissions,
            policy_changes,
            identity_change_expiry_secs,
            unmatched_allows,
            break_glass_review_secs,
            rules,
            freezes,
        })
    }

    /// True when someone with `roles` holds `perm`.
    pub fn permits(&self, roles: &BTreeSet<String>, perm: Permission) -> bool {
        self.permissions
            .get(&perm)
            .is_some_and(|allowed| allowed.iter().any(|r| roles.contains(r)))
    }
}
