//! `report.html`: the bundle for a person. One self-contained file (inline
//! CSS and JavaScript, no external assets): scope, verification status and
//! how to re-check, the changes with their segregation-of-duties outcome,
//! every decision, the exceptions, the control mapping and the policy
//! trail. Tables sort by clicking a header and filter by typing; both work
//! from a local file with no server.

use std::fmt::Write as _;

use super::Scope;
use super::facts::View;
use super::oscal::controls;
use crate::state::gov::fmt_nanos;

/// Escapes text for HTML element content and quoted attributes. Characters
/// that would reorder or hide text (`event::hidden`, but for newline and
/// tab) show as a marked code point, `[U+202E]`, so the page shows what the
/// bytes say.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            '\n' | '\t' => o.push(c),
            // Plain text, so that it is safe in attributes too.
            c if crate::event::hidden(c) => {
                let _ = write!(o, "[U+{:04X}]", u32::from(c));
            }
            _ => o.push(c),
        }
    }
    o
}

fn short(s: &str) -> String {
    match s.strip_prefix("sha256:") {
        Some(h) => format!("sha256:{}…", &h[..12.min(h.len())]),
        None => s.chars().take(12).collect(),
    }
}

const STYLE: &str = r#"
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2430;background:#fafbfc}
header{background:#1d2430;color:#fff;padding:1.2em 2em}header h1{margin:0 0 .3em;font-size:1.5em}
header p{margin:.1em 0;color:#c9d1dc}code{font:13px ui-monospace,Menlo,monospace;background:#eef1f5;padding:0 .25em;border-radius:3px;color:#1d2430}
main{padding:1em 2em 3em;max-width:1400px}section{margin-top:1.8em}h2{font-size:1.2em;border-bottom:1px solid #d8dee6;padding-bottom:.2em}
table{border-collapse:collapse;width:100%;background:#fff;font-size:14px}th,td{border:1px solid #d8dee6;padding:.35em .5em;text-align:left;vertical-align:top}
th{background:#eef1f5;cursor:pointer;user-select:none;white-space:nowrap}th:after{content:" \2195";color:#98a2b3}
.ok{color:#116d3c;font-weight:600}.bad{color:#a3151b;font-weight:600}.warn{color:#8a5300;font-weight:600}
.status{padding:.8em 1em;border-radius:6px;background:#e8f5ee;border:1px solid #9fd3b5}
.status.bad{background:#fdecec;border-color:#f0a8a8}
input[type=search]{font:inherit;padding:.3em .5em;width:22em;margin:.4em 0}.muted{color:#667085}
.tiles{display:flex;gap:1em;flex-wrap:wrap}.tile{background:#fff;border:1px solid #d8dee6;border-radius:6px;padding:.6em 1em;min-width:9em}
.tile b{display:block;font-size:1.5em}ul{margin:.2em 0;padding-left:1.2em}
"#;

const SCRIPT: &str = r#"
(function(){
  function cellValue(row, i){ var c=row.cells[i]; return c ? (c.getAttribute('data-sort') || c.textContent.trim()) : ''; }
  document.querySelectorAll('table.sortable').forEach(function(table){
    var heads=table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function(th, i){
      th.addEventListener('click', function(){
        var asc = th.getAttribute('data-dir') !== 'asc';
        Array.prototype.forEach.call(heads, function(h){ h.removeAttribute('data-dir'); });
        th.setAttribute('data-dir', asc ? 'asc' : 'desc');
        var rows=Array.prototype.slice.call(table.tBodies[0].rows);
        rows.sort(function(a,b){
          var x=cellValue(a,i), y=cellValue(b,i), nx=parseFloat(x), ny=parseFloat(y);
          var r = (!isNaN(nx) && !isNaN(ny) && String(nx)===x && String(ny)===y) ? nx-ny : x.localeCompare(y);
          return asc ? r : -r;
        });
        rows.forEach(function(r){ table.tBodies[0].appendChild(r); });
      });
    });
  });
  document.querySelectorAll('input[data-filter]').forEach(function(input){
    var table=document.getElementById(input.getAttribute('data-filter'));
    var counter=document.getElementById(input.getAttribute('data-counter'));
    function apply(){
      var q=input.value.toLowerCase(), shown=0, rows=table.tBodies[0].rows;
      Array.prototype.forEach.call(rows, function(r){
        var hit = r.textContent.toLowerCase().indexOf(q) >= 0;
        r.style.display = hit ? '' : 'none'; if (hit) shown++;
      });
      if (counter) counter.textContent = shown + ' of ' + rows.length + ' shown';
    }
    input.addEventListener('input', apply); apply();
  });
})();
"#;

pub(super) fn html(view: &View<'_>) -> String {
    let meta = view.meta;
    let gov = view.folded.state.gov();
    let mut h = String::new();
    let scope = match &meta.scope {
        Scope::Change { .. } => meta.scope.describe(),
        Scope::Period { .. } => meta.scope.period_words(),
        Scope::Control { control, from, to } => format!(
            "{} from {} to {}",
            control.title(),
            fmt_nanos(*from),
            fmt_nanos(*to)
        ),
    };
    let _ = writeln!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>Docket evidence: {}</title><style>{STYLE}</style></head><body>",
        esc(&scope)
    );
    let _ = writeln!(
        h,
        "<header><h1>{}: {}</h1><p>Log <code>{}</code> · checkpoint of {} entries, root <code>{}</code></p>\
         <p>Statuses as of {} · {} entries in this bundle, {} of them in scope</p></header><main>",
        match meta.scope {
            Scope::Change { .. } => "Change evidence",
            Scope::Period { .. } => "Period evidence",
            Scope::Control { .. } => "Control evidence",
        },
        esc(&scope),
        esc(&meta.origin),
        meta.checkpoint_size,
        hex::encode(meta.checkpoint_root),
        esc(&fmt_nanos(meta.as_of)),
        view.folded.info.len(),
        view.in_scope.len()
    );

    // Verification.
    let ranged = meta.range.map(|(s, e)| e - s).unwrap_or(0);
    let _ = writeln!(
        h,
        "<section id=\"verification\"><h2>Verification</h2>\
         <p id=\"verification-status\" class=\"status\"><span class=\"ok\">Verified when exported.</span> \
         The manifest's signature by the log key, the digest of every file, the signed checkpoint, \
         {} inclusion proof(s){}, the hash-chain links between consecutive entries, {} event signature(s) against the \
         key history this bundle carries (folded from genesis), and {} decision(s) re-evaluated from the facts in this bundle.{}{}</p>\
         <p>To check it again, offline, with nothing but the log's public key:</p>\
         <pre><code>docket evidence verify BUNDLE.tar --log-key log.vkey</code></pre>\
         <p class=\"muted\">The command exits non-zero and names the first failure if any byte of the bundle \
         was changed. The file format is described in docs/evidence-format.md, so the check can also be \
         done with an independent verifier.</p></section>",
        view.folded.info.len() as u64 - ranged,
        match (&meta.scope, meta.range) {
            (_, None) => String::new(),
            (Scope::Change { id, .. }, Some((start, _))) => format!(
                " and one range proof for the {ranged} consecutive entries from the one that opened change {} (entry {start}) to the checkpoint, which proves that none concerning it from its opening on was left out (facts recorded before its opening, such as CI runs and commit observations of its subjects, only as far as its recorded decisions read them)",
                esc(id)
            ),
            (_, Some((start, _))) => {
                let from = if start == 0 {
                    "the log's first entry".to_owned()
                } else {
                    format!("entry {start}, the last before the period and its lead-in,")
                };
                match meta.unfinished_period() {
                    Some(_) => format!(
                        " and one range proof for the {ranged} consecutive entries from {from} to the checkpoint"
                    ),
                    None => format!(
                        " and one range proof for the {ranged} consecutive entries from {from} to the first entry after the period, which proves that none of the period was left out"
                    ),
                }
            }
        },
        view.folded.info.len(),
        gov.deployments().count(),
        match (&meta.scope, meta.range, meta.heads, meta.subjects) {
            (Scope::Change { .. }, None, Some(_), Some(_)) =>
                " The change head the checkpoint signs proves that every entry concerning the \
                 change (its opening, amendments, reviews, the deployments decided on it and their \
                 break-glass reviews) is in this bundle, and its subject heads prove the same of \
                 every entry concerning the change's commits and artifacts (their commit \
                 observations, CI runs, the changes binding them and the deployment requests \
                 naming them), before and after the change was opened.",
            (Scope::Change { .. }, None, Some(_), None) =>
                " The change head the checkpoint signs proves that every entry concerning the \
                 change (its opening, amendments, reviews, the deployments decided on it and their \
                 break-glass reviews) is in this bundle. Facts of its subjects (CI runs, commit \
                 observations, other deployment requests) are proven complete only as far as its \
                 recorded decisions read them; a bundle exported with <code>--complete</code> \
                 proves all of them from the change's opening on.",
            (Scope::Change { .. }, None, None, _) =>
                " It does not prove that it carries every entry concerning the change (its \
                 checkpoint signs no change heads): its \
                 reviews, amendments and CI runs after its last carried deployment, and its \
                 deployments of subjects it no longer binds (an earlier break-glass, say), \
                 could be left out; a bundle exported with <code>--complete</code> proves it.",
            _ => "",
        },
        match (&meta.scope, meta.unfinished_period()) {
            (Scope::Period { .. } | Scope::Control { .. }, Some(to)) => format!(
                " <b class=\"warn\">The log had not reached the end of the period ({}) at the checkpoint: \
                 this bundle proves the period complete only up to its last entry, {}. \
                 Export it again after the period ends for all of it.</b>",
                esc(&fmt_nanos(to)),
                esc(&fmt_nanos(meta.as_of))
            ),
            _ => String::new(),
        }
    );

    // Summary tiles.
    let allowed = view.decisions.iter().filter(|d| d.decision.allow).count();
    // Break-glass that was allowed: a refused attempt bypassed nothing.
    let glass = view
        .decisions
        .iter()
        .filter(|d| d.break_glass && d.decision.allow)
        .count();
    let _ = writeln!(
        h,
        "<section id=\"summary\"><h2>Summary</h2><div class=\"tiles\">\
         <div class=\"tile\"><b>{}</b>changes</div><div class=\"tile\"><b>{allowed}</b>deployments allowed</div>\
         <div class=\"tile\"><b>{}</b>deployments denied</div><div class=\"tile\"><b>{glass}</b>break-glass</div>\
         <div class=\"tile\"><b class=\"{}\">{}</b>violations</div></div></section>",
        view.changes.len(),
        view.decisions.len() - allowed,
        if view.violations.is_empty() {
            "ok"
        } else {
            "bad"
        },
        view.violations.len()
    );

    // Changes.
    let _ = writeln!(
        h,
        "<section id=\"changes\"><h2>Changes</h2>\
         <input type=\"search\" placeholder=\"Filter changes…\" data-filter=\"change-table\" data-counter=\"change-count\"> \
         <span id=\"change-count\" class=\"muted\"></span>\
         <table id=\"change-table\" class=\"sortable\"><thead><tr><th>Change</th><th>Requested by</th>\
         <th>Authored by</th><th>Approved by</th><th>CI</th><th>Deployed</th><th>Segregation of duties</th></tr></thead><tbody>"
    );
    for c in &view.changes {
        let cur = c.current();
        let (authors, unmapped) = view.authors(c);
        let mut authored: Vec<String> = authors.iter().map(|a| esc(a)).collect();
        authored.extend(
            unmapped
                .iter()
                .map(|e| format!("<span class=\"warn\">{}</span>", esc(e))),
        );
        let built_from: Vec<String> = view
            .built_from(c)
            .into_iter()
            .map(|s| esc(&short(s)))
            .collect();
        let mut authored = authored.join(", ");
        if !built_from.is_empty() {
            let _ = write!(
                authored,
                "<br><span class=\"muted\">of {}, which its artifacts were built from</span>",
                built_from.join(", ")
            );
        }
        let subjects = cur.subjects();
        let latest = view.latest_decision(c);
        // The reviews that speak for the current revision: after it, and of
        // exactly its subjects (an earlier review is stale, whatever it saw),
        // each marked when the latest decision did not count it.
        let approvals: Vec<String> = c
            .reviews
            .iter()
            .filter(|r| r.index > cur.index && r.seen == subjects)
            .map(|r| {
                let uncounted =
                    latest.and_then(|d| d.decision.not_counted.iter().find(|n| n.index == r.index));
                if let (true, Some(n)) = (r.approve, uncounted) {
                    format!(
                        "{} (entry {}) <span class=\"warn\">not counted: {}</span>",
                        esc(&r.reviewer),
                        r.index,
                        esc(&n.reason)
                    )
                } else if r.approve {
                    format!("{} (entry {})", esc(&r.reviewer), r.index)
                } else {
                    format!(
                        "<span class=\"bad\">{} rejected</span> (entry {})",
                        esc(&r.reviewer),
                        r.index
                    )
                }
            })
            .collect();
        let mut ci = Vec::new();
        for s in &subjects {
            // A run of one of its commits speaks for the change when it
            // built one of the change's artifacts, or none at all (a test
            // run); a run that built some other artifact from it does not.
            let relevant = |r: &&crate::state::gov::CiRec| {
                r.digests.contains(s)
                    || cur.digests.is_empty()
                    || r.digests.is_empty()
                    || r.digests.iter().any(|d| cur.digests.contains(d))
            };
            if let Some(r) = gov.ci_runs_for(s).filter(relevant).last() {
                ci.push(format!(
                    "<span class=\"{}\">{}</span> {} by {}",
                    if r.passed { "ok" } else { "bad" },
                    esc(&r.status),
                    esc(&short(s)),
                    esc(&r.builder)
                ));
            }
        }
        let deployments: Vec<_> = c
            .deployments
            .iter()
            .filter_map(|d| gov.deployment(*d))
            .collect();
        let deployed: Vec<String> = deployments
            .iter()
            .map(|d| {
                format!(
                    "<span class=\"{}\">{}</span> {} {}{}",
                    if d.decision.allow { "ok" } else { "bad" },
                    if d.decision.allow {
                        "allowed"
                    } else {
                        "denied"
                    },
                    esc(&d.environment),
                    esc(&fmt_nanos(d.decision.at_nanos)),
                    if d.break_glass { " (break-glass)" } else { "" }
                )
            })
            .collect();
        // Sorted by when it was last deployed (never deployed: first).
        let deployed_key = deployments
            .iter()
            .map(|d| d.decision.at_nanos)
            .max()
            .map_or_else(String::new, sort_key);
        let sod = match latest {
            Some(d) if d.decision.allow && !d.break_glass => format!(
                "<span class=\"ok\">satisfied</span>: counted {}",
                esc(&d
                    .decision
                    .counted
                    .iter()
                    .map(|c| c.approver.clone())
                    .collect::<Vec<_>>()
                    .join(", "))
            ),
            Some(d) if d.break_glass && d.decision.allow => {
                "<span class=\"warn\">bypassed (break-glass)</span>".to_owned()
            }
            Some(d) => {
                // Denied, perhaps for something else than its approvals
                // (promotion order, CI, a freeze): say why first.
                let mut s = format!(
                    "<span class=\"bad\">not satisfied</span>: its latest deployment, entry {}, was denied: {}",
                    d.index,
                    esc(&d.decision.reasons.join("; "))
                );
                if !d.decision.counted.is_empty() {
                    let counted: Vec<&str> = d
                        .decision
                        .counted
                        .iter()
                        .map(|c| c.approver.as_str())
                        .collect();
                    let _ = write!(s, "<br>counted: {}", esc(&counted.join(", ")));
                }
                for n in &d.decision.not_counted {
                    let _ = write!(s, "<br>{}: {}", esc(&n.approver), esc(&n.reason));
                }
                s
            }
            None => "<span class=\"muted\">no deployment decided</span>".to_owned(),
        };
        let _ = writeln!(
            h,
            "<tr><td data-sort=\"{}\"><b>{}</b><br>{}<br><span class=\"muted\">revision {} · {}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td data-sort=\"{}\">{}</td><td>{}</td></tr>",
            esc(&c.id),
            esc(&c.id),
            esc(&c.title),
            c.revisions.len(),
            esc(&c.ticket),
            esc(&c.requesters.join(", ")),
            authored,
            approvals.join("<br>"),
            ci.join("<br>"),
            deployed_key,
            deployed.join("<br>"),
            sod
        );
    }
    h.push_str("</tbody></table></section>\n");

    // Decisions.
    let _ = writeln!(
        h,
        "<section id=\"decisions\"><h2>Decisions</h2>\
         <input type=\"search\" placeholder=\"Filter decisions…\" data-filter=\"decision-table\" data-counter=\"decision-count\"> \
         <span id=\"decision-count\" class=\"muted\"></span>\
         <table id=\"decision-table\" class=\"sortable\"><thead><tr><th>Entry</th><th>Time</th><th>Actor</th><th>Environment</th>\
         <th>Subjects</th><th>Change</th><th>Verdict</th><th>Rule · policy</th><th>Reasons</th></tr></thead><tbody>"
    );
    for d in &view.decisions {
        let dec = &d.decision;
        let _ = writeln!(
            h,
            "<tr><td data-sort=\"{}\">{}</td><td data-sort=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{} · v{}</td><td><ul>{}</ul></td></tr>",
            d.index,
            d.index,
            sort_key(dec.at_nanos),
            esc(&fmt_nanos(dec.at_nanos)),
            esc(&d.actor),
            esc(&d.environment),
            esc(&d
                .subjects
                .iter()
                .map(|s| short(s))
                .collect::<Vec<_>>()
                .join(", ")),
            esc(&dec
                .change
                .as_ref()
                .map(|c| format!("{} r{}", c.0, c.1))
                .unwrap_or_default()),
            if dec.allow { "ok" } else { "bad" },
            if dec.allow { "allow" } else { "deny" },
            esc(dec.rule.as_deref().unwrap_or("(none)")),
            dec.policy_version,
            dec.reasons
                .iter()
                .map(|r| format!("<li>{}</li>", esc(r)))
                .collect::<String>()
        );
    }
    h.push_str("</tbody></table></section>\n");

    // Exceptions.
    h.push_str("<section id=\"exceptions\"><h2>Exceptions</h2><ul>\n");
    let mut any = false;
    // Every obligation in scope: those its break-glass deployments opened,
    // and those from before it that were reviewed or came due in it.
    for o in &view.obligations {
        any = true;
        let _ = writeln!(
            h,
            "<li><span class=\"warn\">Break-glass</span> by {} to {} at entry {} ({}): “{}” — review {}</li>",
            esc(&o.actor),
            esc(&o.environment),
            o.deployment_index,
            esc(&fmt_nanos(o.opened_nanos)),
            esc(&o.justification),
            esc(o.status(meta.as_of).name())
        );
    }
    for v in &view.violations {
        any = true;
        let _ = writeln!(
            h,
            "<li><span class=\"bad\">{}</span>: {}</li>",
            esc(v.kind),
            esc(&v.description)
        );
    }
    for d in view.decisions.iter().filter(|d| !d.decision.allow) {
        any = true;
        let _ = writeln!(
            h,
            "<li><span class=\"bad\">Denied deployment</span> by {} to {} at entry {}: {}</li>",
            esc(&d.actor),
            esc(&d.environment),
            d.index,
            esc(&d.decision.reasons.join("; "))
        );
    }
    if !any {
        h.push_str("<li class=\"muted\">None in scope.</li>\n");
    }
    h.push_str("</ul></section>\n");

    // Controls.
    h.push_str(
        "<section id=\"controls\"><h2>Control mapping</h2><table class=\"sortable\"><thead><tr><th>Control</th>\
         <th>Outcome</th><th>What the bundle shows</th></tr></thead><tbody>\n",
    );
    for c in controls(&meta.scope) {
        let (ok, words) = view.control_outcome(c);
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            esc(c.title()),
            if ok { "ok" } else { "bad" },
            if ok { "satisfied" } else { "not satisfied" },
            esc(&words)
        );
    }
    h.push_str("</tbody></table><p class=\"muted\">Mapping explained in docs/controls.md; machine-readable in oscal/assessment-results.json.</p></section>\n");

    // Policies.
    h.push_str("<section id=\"policies\"><h2>Policy versions</h2><ul>\n");
    for v in gov.policy_versions() {
        let trail = if v.proposal_id.is_empty() {
            "from genesis".to_owned()
        } else {
            format!(
                "proposal {} activated at entry {}, approved by {}",
                v.proposal_id,
                v.activated_at,
                v.approvers.join(", ")
            )
        };
        let _ = writeln!(
            h,
            "<li>Version {} (<code>{}</code>): {} — <code>policies/v{}.toml</code></li>",
            v.version,
            esc(&v.digest[..16.min(v.digest.len())]),
            esc(&trail),
            v.version
        );
    }
    let _ = writeln!(
        h,
        "</ul></section>\n</main><script>{SCRIPT}</script></body></html>"
    );
    h
}

/// A time as a sort key: nanoseconds, zero-padded so that the report's
/// sorter (text order for what is not a plain number) orders them by time.
fn sort_key(nanos: i64) -> String {
    format!("t{:020}", nanos.max(0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_shows_what_its_bytes_say() {
        assert_eq!(
            super::esc("a<b> & \"c\" 'd'"),
            "a&lt;b&gt; &amp; &quot;c&quot; &#39;d&#39;"
        );
        assert_eq!(
            super::esc("line\n\ttab \u{202e}gpj.exe\u{200b}\u{1b}[2J"),
            "line\n\ttab [U+202E]gpj.exe[U+200B][U+001B][2J"
        );
        assert_eq!(super::esc("Zoë Ørsted 田中"), "Zoë Ørsted 田中");
    }
}
