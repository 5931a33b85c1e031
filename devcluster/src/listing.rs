//! `AuthService.ListResources` for the kinds a bot's access outputs look up (`app_server`,
//! `db_server`, `kube_server`): a page of the resources the caller's roles may see, filtered by labels and by
//! the predicate expression tbot sends (`lib/tbot/internal` `MakeNameOrDiscoveredNamePredicate`:
//! `(name == "x") || (labels["teleport.internal/discovered-name"] == "x")`, or `name == "x"`
//! for apps).
//!
//! RBAC as Teleport's: a resource the caller's roles do not grant (`app_labels`, `db_labels`,
//! `kubernetes_labels`) is left out of the page without a word, so a client asking for it by name
//! finds nothing.

use std::collections::BTreeMap;

use keybound_proto::proto as legacy;
use tonic::Status;

use crate::caller::Caller;
use crate::cluster::Cluster;
use crate::labels::{Selector, matches};
use crate::roles::Role;

/// One resource as listing sees it: its name, its labels, and what the page holds for it.
struct Listed {
    name: String,
    labels: BTreeMap<String, String>,
    resource: legacy::paginated_resource::Resource,
}

/// A page of `request.resource_type` for `caller`.
pub(crate) fn list_resources(
    cluster: &Cluster,
    caller: &Caller,
    request: &legacy::ListResourcesRequest,
) -> Result<legacy::ListResourcesResponse, Status> {
    if request.limit <= 0 {
        return Err(Status::invalid_argument("nonpositive parameter limit"));
    }
    let predicate = Predicate::parse(&request.predicate_expression).map_err(|e| {
        Status::invalid_argument(format!(
            "failed to parse predicate expression {:?}: {e}",
            request.predicate_expression
        ))
    })?;
    let roles: Vec<Role> = caller
        .roles
        .iter()
        .filter_map(|r| cluster.role(r))
        .collect();
    let hostname = cluster.ca().cluster_name();
    let (all, grants): (Vec<Listed>, fn(&Role) -> &Selector) = match request.resource_type.as_str()
    {
        "app_server" => (
            cluster
                .apps()
                .into_iter()
                .map(|a| Listed {
                    resource: legacy::paginated_resource::Resource::AppServer(
                        a.to_server(hostname),
                    ),
                    name: a.name,
                    labels: a.labels,
                })
                .collect(),
            |r| &r.app_labels,
        ),
        "db_server" => (
            cluster
                .databases()
                .into_iter()
                .map(|d| Listed {
                    resource: legacy::paginated_resource::Resource::DatabaseServer(
                        d.to_server(hostname),
                    ),
                    name: d.name,
                    labels: d.labels,
                })
                .collect(),
            |r| &r.db_labels,
        ),
        "kube_server" => (
            cluster
                .kube_clusters()
                .into_iter()
                .map(|k| Listed {
                    resource: legacy::paginated_resource::Resource::KubernetesServer(
                        k.to_server(hostname),
                    ),
                    name: k.name,
                    labels: k.labels,
                })
                .collect(),
            |r| &r.kubernetes_labels,
        ),
        other => {
            return Err(Status::unimplemented(format!(
                "resource type {other:?} is not listed by the dev cluster (app_server, db_server, kube_server)"
            )));
        }
    };
    let mut visible: Vec<Listed> = all
        .into_iter()
        .filter(|l| roles.iter().any(|r| matches(grants(r), &l.labels)))
        .filter(|l| {
            request
                .labels
                .iter()
                .all(|(k, v)| l.labels.get(k) == Some(v))
        })
        .filter(|l| predicate.holds(&l.name, &l.labels))
        .filter(|l| request.start_key.is_empty() || l.name >= request.start_key)
        .collect();
    visible.sort_by(|a, b| a.name.cmp(&b.name));
    let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
    let next_key = visible
        .get(limit)
        .map(|l| l.name.clone())
        .unwrap_or_default();
    visible.truncate(limit);
    Ok(legacy::ListResourcesResponse {
        resources: visible
            .into_iter()
            .map(|l| legacy::PaginatedResource {
                resource: Some(l.resource),
            })
            .collect(),
        next_key,
        total_count: 0,
    })
}

/// The predicate expressions tbot sends: comparisons of `name` or `labels["key"]` with a
/// string, joined by `||` and `&&`, in parentheses or not. Empty holds for everything.
#[derive(Debug, PartialEq)]
enum Predicate {
    True,
    NameIs(String),
    LabelIs(String, String),
    Or(Box<Self>, Box<Self>),
    And(Box<Self>, Box<Self>),
}

impl Predicate {
    fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::True);
        }
        let tokens = tokenize(text)?;
        let mut at = 0;
        let predicate = or(&tokens, &mut at)?;
        if at != tokens.len() {
            return Err(format!("unexpected {:?}", tokens[at]));
        }
        Ok(predicate)
    }

    fn holds(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Self::True => true,
            Self::NameIs(n) => n == name,
            Self::LabelIs(k, v) => labels.get(k) == Some(v),
            Self::Or(a, b) => a.holds(name, labels) || b.holds(name, labels),
            Self::And(a, b) => a.holds(name, labels) && b.holds(name, labels),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Symbol(&'static str),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            // Go's %q: a Go string literal, whose escapes JSON reads the same for the
            // characters names hold.
            let mut literal = String::from('"');
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated string".to_owned()),
                    Some('\\') => {
                        literal.push('\\');
                        literal.push(chars.next().ok_or("unterminated string")?);
                    }
                    Some('"') => break,
                    Some(c) => literal.push(c),
                }
            }
            literal.push('"');
            let value: String =
                serde_json::from_str(&literal).map_err(|e| format!("bad string: {e}"))?;
            out.push(Token::Text(value));
        } else if c.is_ascii_alphabetic() {
            let mut word = String::new();
            while let Some(&c) = chars
                .peek()
                .filter(|c| c.is_ascii_alphanumeric() || **c == '_')
            {
                word.push(c);
                chars.next();
            }
            out.push(Token::Word(word));
        } else {
            let two: String = chars.clone().take(2).collect();
            let symbol = ["==", "||", "&&"]
                .into_iter()
                .find(|s| *s == two)
                .or_else(|| ["(", ")", "[", "]"].into_iter().find(|s| s.starts_with(c)))
                .ok_or_else(|| format!("unexpected {c:?}"))?;
            for _ in 0..symbol.len() {
                chars.next();
            }
            out.push(Token::Symbol(symbol));
        }
    }
    Ok(out)
}

fn or(tokens: &[Token], at: &mut usize) -> Result<Predicate, String> {
    let mut left = and(tokens, at)?;
    while tokens.get(*at) == Some(&Token::Symbol("||")) {
        *at += 1;
        left = Predicate::Or(Box::new(left), Box::new(and(tokens, at)?));
    }
    Ok(left)
}

fn and(tokens: &[Token], at: &mut usize) -> Result<Predicate, String> {
    let mut left = term(tokens, at)?;
    while tokens.get(*at) == Some(&Token::Symbol("&&")) {
        *at += 1;
        left = Predicate::And(Box::new(left), Box::new(term(tokens, at)?));
    }
    Ok(left)
}

fn term(tokens: &[Token], at: &mut usize) -> Result<Predicate, String> {
    let mut next = || {
        let token = tokens.get(*at).cloned();
        *at += 1;
        token.ok_or_else(|| "unexpected end".to_owned())
    };
    match next()? {
        Token::Symbol("(") => {
            let inner = or(tokens, at)?;
            match tokens.get(*at) {
                Some(Token::Symbol(")")) => {
                    *at += 1;
                    Ok(inner)
                }
                _ => Err("missing )".to_owned()),
            }
        }
        Token::Word(w) if w == "name" => match (next()?, next()?) {
            (Token::Symbol("=="), Token::Text(v)) => Ok(Predicate::NameIs(v)),
            _ => Err("expected name == \"...\"".to_owned()),
        },
        Token::Word(w) if w == "labels" => match (next()?, next()?, next()?, next()?, next()?) {
            (
                Token::Symbol("["),
                Token::Text(k),
                Token::Symbol("]"),
                Token::Symbol("=="),
                Token::Text(v),
            ) => Ok(Predicate::LabelIs(k, v)),
            _ => Err("expected labels[\"...\"] == \"...\"".to_owned()),
        },
        other => Err(format!(
            "unexpected {other:?}; the dev cluster knows name and labels comparisons"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_predicates_tbot_sends() {
        let labels: BTreeMap<String, String> = [(
            "teleport.internal/discovered-name".to_owned(),
            "pg".to_owned(),
        )]
        .into_iter()
        .collect();
        let p = Predicate::parse(
            r#"(name == "pg") || (labels["teleport.internal/discovered-name"] == "pg")"#,
        )
        .unwrap();
        assert!(p.holds("pg-us-east-1", &labels));
        assert!(p.holds("pg", &BTreeMap::new()));
        assert!(!p.holds("other", &BTreeMap::new()));
        let p = Predicate::parse(r#"name == "a \"quoted\" name""#).unwrap();
        assert_eq!(p, Predicate::NameIs("a \"quoted\" name".into()));
        assert_eq!(Predicate::parse("").unwrap(), Predicate::True);
        assert!(Predicate::parse("name == ").is_err());
        assert!(Predicate::parse(r#"search("x")"#).is_err());
        assert!(Predicate::parse(r#"(name == "a""#).is_err());
    }
}
