//! `oscal/assessment-results.json`: the bundle's findings as an OSCAL 1.2
//! assessment-results document (validated by compliance-trestle in CI).
//! UUIDs are derived from the bundle's content (version-5 form), so the same
//! bundle always gives the same document.

use serde_json::{Value, json};

use super::facts::View;
use super::{Control, Scope};

/// Namespace of Docket's OSCAL properties.
const NS: &str = "https://docket.dev/ns/oscal";

/// A version-5-form UUID from BLAKE3 of the bundle identity and `name`.
fn uuid(view: &View<'_>, name: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(view.meta.origin.as_bytes());
    h.update(&view.meta.checkpoint_root);
    h.update(
        super::facts::scope_json(&view.meta.scope)
            .to_string()
            .as_bytes(),
    );
    h.update(name.as_bytes());
    let mut b: [u8; 16] = h.finalize().as_bytes()[..16].try_into().expect("16 bytes");
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// RFC 3339 with a zone, to the second (what OSCAL's date-time wants).
fn time(nanos: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(nanos))
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn prop(name: &str, value: impl ToString) -> Value {
    json!({"name": name, "ns": NS, "value": value.to_string()})
}

/// The controls a bundle reports on: the scope's control, else all.
pub(super) fn controls(scope: &Scope) -> Vec<Control> {
    match scope {
        Scope::Control { control, .. } => vec![*control],
        _ => Control::ALL.to_vec(),
    }
}

pub(super) fn assessment_results(view: &View<'_>) -> Value {
    let meta = view.meta;
    let start = match &meta.scope {
        Scope::Period { from, .. } | Scope::Control { from, .. } => *from,
        Scope::Change { .. } => view
            .in_scope
            .iter()
            .next()
            .and_then(|i| view.folded.info.get(i))
            .map(|i| i.time)
            .unwrap_or(meta.as_of),
    }
    .min(meta.as_of);
    let scope_words = match &meta.scope {
        Scope::Change { .. } => meta.scope.describe(),
        // The bounds and the filters: a finding read on its own (GRC tools
        // read this file, not the report) must not pass for a wider scope.
        Scope::Period { .. } => format!("the period {}", meta.scope.period_words()),
        Scope::Control { control, from, to } => format!(
            "{} over the period {} to {}",
            control.key(),
            crate::state::gov::fmt_nanos(*from),
            crate::state::gov::fmt_nanos(*to)
        ),
    };
    let mut observations = Vec::new();
    let mut findings = Vec::new();
    for c in controls(&meta.scope) {
        let (ok, words) = view.control_outcome(c);
        let obs = uuid(view, &format!("observation:{}", c.key()));
        let evidence = match c {
            Control::Hipaa164312b => vec![
                json!({"href": "entries.bin", "description": "Every entry in scope, verbatim as the log stores it."}),
                json!({"href": "checkpoint.txt", "description": "The signed checkpoint all proofs lead to."}),
                json!({"href": "manifest.sig", "description": "The log key's signature over the manifest of every file."}),
            ],
            _ => vec![
                json!({"href": "facts/changes.json", "description": "Each change: requesters, authors, approvals, CI, deployments and the segregation-of-duties outcome."}),
                json!({"href": "facts/decisions.json", "description": "Every deployment decision with its rule, policy version and reasons."}),
                json!({"href": "facts/policies.json", "description": "The policy versions in force and their approval trail."}),
                json!({"href": "facts/obligations.json", "description": "Break-glass review obligations and violations as of the bundle's time."}),
            ],
        };
        observations.push(json!({
            "uuid": obs,
            "title": format!("{}: facts from the log", c.title()),
            "description": words,
            "methods": ["EXAMINE", "TEST"],
            "relevant-evidence": evidence,
            "collected": time(meta.as_of),
        }));
        findings.push(json!({
            "uuid": uuid(view, &format!("finding:{}", c.key())),
            "title": c.title(),
            "description": if ok {
                format!("Satisfied for {scope_words}: {words}.")
            } else {
                format!("Not satisfied for {scope_words}: {words}. See the violations in facts/obligations.json.")
            },
            "target": {
                "type": "objective-id",
                "target-id": c.oscal_id(),
                "status": {"state": if ok { "satisfied" } else { "not-satisfied" }},
            },
            "related-observations": [{"observation-uuid": obs}],
        }));
    }
    json!({
        "assessment-results": {
            "uuid": uuid(view, "assessment-results"),
            "metadata": {
                "title": format!("Docket evidence for {scope_words} from log {}", meta.origin),
                "last-modified": time(meta.as_of),
                "version": "1",
                "oscal-version": "1.2.1",
                "props": [
                    prop("log-origin", &meta.origin),
                    prop("checkpoint-size", meta.checkpoint_size),
                    prop("checkpoint-root", hex::encode(meta.checkpoint_root)),
                ],
            },
            "import-ap": {
                "href": "#",
                "remarks": "No separate assessment plan: the reviewed controls are listed in the result, and the facts are in this evidence bundle.",
            },
            "results": [{
                "uuid": uuid(view, "result"),
                "title": format!("Change-management and audit evidence for {scope_words}"),
                "description": "Evaluated by Docket from signed, hash-chained log entries; re-check with `docket evidence verify`.",
                "start": time(start),
                "end": time(meta.as_of),
                "reviewed-controls": {
                    "control-selections": [{
                        "include-controls": controls(&meta.scope).iter().map(|c| json!({"control-id": c.oscal_id()})).collect::<Vec<_>>(),
                    }],
                },
                "observations": observations,
                "findings": findings,
            }],
        }
    })
}
