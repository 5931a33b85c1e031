//! A role's `rules` (`allow.rules`, `deny.rules`): which verbs a role grants on which resource
//! kinds, and the `where` clause that narrows a rule, for the kinds whose checks the dev
//! cluster makes (`host_cert`: `TrustService.GenerateHostCert`).
//!
//! Teleport evaluates `where` with its predicate language (`lib/services/parser.go`); the dev
//! cluster reads the forms Teleport's host certificate rules use (its parser tests,
//! `TestParserHostCertContext`, and `lib/tbot` tests): `all_equal(host_cert.principals, "v")`,
//! `is_subset(host_cert.principals, "a", "b", ...)` and `all_end_with(host_cert.principals,
//! ".suffix")`. A role with any other `where` is refused when it is loaded, so that no rule is
//! read more widely than it was written.

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// One rule.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Rule {
    /// `resources`: kinds, or `*`.
    pub resources: Vec<String>,
    /// `verbs`: verbs, or `*`.
    pub verbs: Vec<String>,
    /// `where`, as written; empty for none.
    pub predicate: String,
    /// `where`, read.
    condition: Option<Condition>,
}

/// The `where` forms the dev cluster reads, over a list (`host_cert.principals`).
#[derive(Clone, Debug, Eq, PartialEq)]
enum Condition {
    /// `all_equal(list, v)`: every element is `v`.
    AllEqual(String),
    /// `is_subset(list, a, b, ...)`: every element is one of the values.
    IsSubset(Vec<String>),
    /// `all_end_with(list, s)`: every element ends with `s`.
    AllEndWith(String),
}

/// What a rule's `where` may look at when a host certificate is asked for
/// (`services.HostCertContext`).
pub struct HostCertContext<'a> {
    /// `host_cert.principals`.
    pub principals: &'a [String],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default, rename = "where")]
    predicate: String,
}

impl Rule {
    /// Reads a rule; `at` names it in errors (`role r: allow.rules[0]`).
    pub(crate) fn from_raw(raw: RawRule, at: &str) -> anyhow::Result<Self> {
        let predicate = raw.predicate.trim().to_owned();
        let condition = if predicate.is_empty() {
            None
        } else {
            Some(parse(&predicate).with_context(|| format!("{at}.where: {predicate:?}"))?)
        };
        Ok(Self {
            resources: raw.resources,
            verbs: raw.verbs,
            predicate,
            condition,
        })
    }

    /// A rule granting `verbs` on `resources`, with `predicate` as its `where`.
    pub fn new(resources: &[&str], verbs: &[&str], predicate: &str) -> anyhow::Result<Self> {
        Self::from_raw(
            RawRule {
                resources: resources.iter().map(|s| s.to_string()).collect(),
                verbs: verbs.iter().map(|s| s.to_string()).collect(),
                predicate: predicate.to_owned(),
            },
            "rule",
        )
    }

    /// Whether the rule names `resource` and `verb` (`Rule.HasResource`, `Rule.HasVerb`).
    fn covers(&self, resource: &str, verb: &str) -> bool {
        let has = |list: &[String], item: &str| list.iter().any(|x| x == "*" || x == item);
        has(&self.resources, resource) && has(&self.verbs, verb)
    }

    /// Whether its `where` holds for a host certificate request.
    fn holds(&self, cx: &HostCertContext<'_>) -> bool {
        let list = cx.principals;
        match &self.condition {
            None => true,
            // Teleport's set functions over an empty list match nothing.
            Some(_) if list.is_empty() => false,
            Some(Condition::AllEqual(v)) => list.iter().all(|p| p == v),
            Some(Condition::IsSubset(set)) => list.iter().all(|p| set.contains(p)),
            Some(Condition::AllEndWith(s)) => list.iter().all(|p| p.ends_with(s.as_str())),
        }
    }

    /// The rule as `tctl get` shows it.
    pub fn to_resource(&self) -> serde_json::Value {
        let mut out = serde_json::json!({ "resources": self.resources, "verbs": self.verbs });
        if !self.predicate.is_empty() {
            out["where"] = self.predicate.clone().into();
        }
        out
    }
}

/// `CheckAccessToRule` (`lib/services/role.go`) for `create` on `host_cert`: a deny rule that
/// covers it and whose `where` holds refuses; otherwise an allow rule that covers it and whose
/// `where` holds grants.
pub fn may_create_host_cert(allow: &[&Rule], deny: &[&Rule], cx: &HostCertContext<'_>) -> bool {
    let applies = |r: &&&Rule| r.covers("host_cert", "create") && r.holds(cx);
    !deny.iter().any(|r| applies(&r)) && allow.iter().any(|r| applies(&r))
}

/// `CheckAccessToRules` for a kind whose rules the dev cluster reads without a `where`
/// (`workload_identity`): every verb must be granted by an allow rule, none refused by a deny
/// rule. A rule with a `where` (which reads `host_cert` only) never applies here.
pub fn may(allow: &[&Rule], deny: &[&Rule], resource: &str, verbs: &[&str]) -> bool {
    let applies = |r: &&Rule, verb: &str| r.condition.is_none() && r.covers(resource, verb);
    verbs.iter().all(|verb| {
        !deny.iter().any(|r| applies(r, verb)) && allow.iter().any(|r| applies(r, verb))
    })
}

/// Reads one `where` of the forms the dev cluster supports.
fn parse(text: &str) -> anyhow::Result<Condition> {
    let unsupported = || {
        anyhow::anyhow!(
            "the dev cluster reads only all_equal, is_subset and all_end_with over \
             host_cert.principals, with quoted strings"
        )
    };
    let (name, rest) = text.split_once('(').ok_or_else(unsupported)?;
    let args = rest.trim_end().strip_suffix(')').ok_or_else(unsupported)?;
    let mut parts = split_args(args).ok_or_else(unsupported)?.into_iter();
    if parts.next().as_deref() != Some("host_cert.principals") {
        return Err(unsupported());
    }
    let values = parts
        .map(|p| unquote(&p).ok_or_else(unsupported))
        .collect::<anyhow::Result<Vec<_>>>()?;
    match (name.trim(), values.as_slice()) {
        ("all_equal", [v]) => Ok(Condition::AllEqual(v.clone())),
        ("all_end_with", [v]) => Ok(Condition::AllEndWith(v.clone())),
        ("is_subset", [_, ..]) => Ok(Condition::IsSubset(values)),
        _ => bail!(unsupported()),
    }
}

/// The comma-separated arguments, each trimmed; commas inside double quotes do not split.
fn split_args(args: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in args.chars() {
        match c {
            _ if escaped => {
                escaped = false;
                current.push(c);
            }
            '\\' if quoted => {
                escaped = true;
                current.push(c);
            }
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut current).trim().to_owned()),
            _ => current.push(c),
        }
    }
    if quoted {
        return None;
    }
    out.push(current.trim().to_owned());
    Some(out)
}

/// A double-quoted string literal (Go's syntax, through JSON's, which covers the escapes a
/// host name could need).
fn unquote(text: &str) -> Option<String> {
    if !(text.len() >= 2 && text.starts_with('"') && text.ends_with('"')) {
        return None;
    }
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn where_clauses_follow_teleports_host_cert_tests() {
        // lib/services/parser_test.go TestParserHostCertContext, "simple".
        let one = names(&["foo.example.com"]);
        let cx = HostCertContext { principals: &one };
        for (predicate, holds) in [
            (
                r#"all_equal(host_cert.principals, "foo.example.com")"#,
                true,
            ),
            (
                r#"is_subset(host_cert.principals, "a", "b", "foo.example.com")"#,
                true,
            ),
            (
                r#"all_end_with(host_cert.principals, ".example.com")"#,
                true,
            ),
            (r#"all_equal(host_cert.principals, "foo")"#, false),
            (r#"is_subset(host_cert.principals, "a", "b", "c")"#, false),
            (r#"all_end_with(host_cert.principals, ".foo")"#, false),
        ] {
            let rule = Rule::new(&["host_cert"], &["create"], predicate).unwrap();
            assert_eq!(
                may_create_host_cert(&[&rule], &[], &cx),
                holds,
                "{predicate}"
            );
        }
        // Every principal must pass, not one.
        let two = names(&["a.example.com", "b.other.org"]);
        let rule = Rule::new(
            &["host_cert"],
            &["create"],
            r#"all_end_with(host_cert.principals, ".example.com")"#,
        )
        .unwrap();
        assert!(!may_create_host_cert(
            &[&rule],
            &[],
            &HostCertContext { principals: &two }
        ));
    }

    #[test]
    fn deny_wins_and_rules_must_cover_the_verb() {
        let p = names(&["h"]);
        let cx = HostCertContext { principals: &p };
        let any = Rule::new(&["*"], &["*"], "").unwrap();
        let read = Rule::new(&["host_cert"], &["read"], "").unwrap();
        assert!(may_create_host_cert(&[&any], &[], &cx));
        assert!(!may_create_host_cert(&[&read], &[], &cx));
        assert!(!may_create_host_cert(&[&any], &[&any], &cx));
        assert!(!may_create_host_cert(&[], &[], &cx));
    }

    #[test]
    fn unsupported_where_clauses_are_refused() {
        for predicate in [
            r#"contains(user.spec.traits["x"], "y")"#,
            r#"all_equal(host_cert.principals)"#,
            r#"all_equal(host_cert.principals, unquoted)"#,
            r#"equals(host_cert.principals, "a")"#,
            r#"all_equal(host_cert.principals, "a"#,
        ] {
            let err = Rule::new(&["host_cert"], &["create"], predicate).unwrap_err();
            assert!(
                format!("{err:#}").contains("all_end_with"),
                "{predicate}: {err:#}"
            );
        }
        let quoted = Rule::new(
            &["host_cert"],
            &["create"],
            r#"is_subset(host_cert.principals, "a,b", "c")"#,
        )
        .unwrap();
        assert!(may_create_host_cert(
            &[&quoted],
            &[],
            &HostCertContext {
                principals: &names(&["a,b"])
            }
        ));
    }
}
