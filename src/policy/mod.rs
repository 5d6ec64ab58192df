//! Pure policy evaluation: a policy document and facts in, a [`Verdict`] out.
//! No I/O, no clock, no randomness: the same facts give the same verdict on
//! every run. The language is documented in `docs/policy.md`; `state` builds
//! the facts from the log and calls [`evaluate`].

mod eval;
mod parse;

pub use eval::{
    Approval, Authorship, ChangeFacts, CiFact, CommitFact, Counted, Decision, Deployment, Facts,
    NotCounted, Obligation, PrincipalFacts, Request, SubjectsKey, Verdict, evaluate, human_secs,
    policy_change_activates, reporter_may_report,
};

/// The policy in force when genesis names none. Never edit it: logs whose
/// genesis carries no policy fold with exactly this text as version 1.
pub const DEFAULT_POLICY: &str = "\
# Docket built-in default policy (genesis named none).
# Every permission belongs to the admin role; a policy change needs two
# admins other than the proposer; nothing is authorized until a policy says how.
version = 1

[defaults]
unmatched = \"deny\"
";
pub(crate) use parse::names_leap_second;

/// Largest policy document accepted, from the network or a file.
pub const MAX_POLICY_BYTES: usize = 256 << 10;
pub use parse::{ApprovalRule, Freeze, Policy, PolicyError, Rule};

use std::collections::BTreeSet;

/// What a principal may do, by role. Checked against the roles principals hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    RegisterPrincipals,
    ChangeRoles,
    ProposePolicy,
    ApprovePolicy,
    OpenChange,
    Approve,
    BreakGlass,
    /// Report facts from outside: commits observed and CI runs.
    Report,
}

impl Permission {
    /// Every permission, in the order `docs/policy.md` lists them.
    pub const ALL: [Permission; 8] = [
        Permission::RegisterPrincipals,
        Permission::ChangeRoles,
        Permission::ProposePolicy,
        Permission::ApprovePolicy,
        Permission::OpenChange,
        Permission::Approve,
        Permission::BreakGlass,
        Permission::Report,
    ];

    /// The key naming it in `[permissions]`.
    pub fn key(self) -> &'static str {
        match self {
            Permission::RegisterPrincipals => "register_principals",
            Permission::ChangeRoles => "change_roles",
            Permission::ProposePolicy => "propose_policy",
            Permission::ApprovePolicy => "approve_policy",
            Permission::OpenChange => "open_change",
            Permission::Approve => "approve",
            Permission::BreakGlass => "break_glass",
            Permission::Report => "report",
        }
    }
}

/// Simple glob: `*` matches any run of characters (including none); every
/// other character matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == text;
    }
    // Bytes, not chars: `*` is ASCII and a literal run is valid UTF-8, so a
    // literal can only match where a character starts; the result is the
    // same as matching characters.
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    // Iterative matcher with one backtrack point (the last `*`).
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Roles as a set, for lookups.
pub type Roles = BTreeSet<String>;

/// What evaluation knows of each principal, by principal id. A hash map:
/// a decision looks up every reviewer and CI reporter of a change, and
/// nothing iterates it, so no order is lost.
pub type Principals = foldhash::HashMap<String, PrincipalFacts>;

#[cfg(test)]
mod tests;
