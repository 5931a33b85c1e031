//! Label selectors of roles (`app_labels`, `db_labels`, `kubernetes_labels`) and whether a
//! resource's labels satisfy one, as Teleport's `services.MatchLabels` decides
//! (`lib/services/role.go`): an empty selector matches nothing; `'*': '*'` matches everything;
//! otherwise every key of the selector must be on the resource with a value one of the
//! selector's values matches (`*` globs).

use std::collections::BTreeMap;

use serde::Deserialize;

/// A role's label selector: each key with the values it allows (one value or a list in YAML).
pub type Selector = BTreeMap<String, Vec<String>>;

/// A selector's values as the YAML gives them: one string, or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Reads a selector whose values may each be one string or a list.
pub(crate) fn deserialize_selector<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Selector, D::Error> {
    let raw: BTreeMap<String, OneOrMany> = BTreeMap::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| match v {
            OneOrMany::One(one) => (k, vec![one]),
            OneOrMany::Many(many) => (k, many),
        })
        .collect())
}

/// Teleport's `utils.MatchString` globs: `*` matches any run of characters.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut remaining) = text.strip_prefix(head) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('*').collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return remaining.ends_with(part);
        }
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Whether `labels` satisfy `selector` (`MatchLabels`).
pub fn matches(selector: &Selector, labels: &BTreeMap<String, String>) -> bool {
    if selector.is_empty() {
        return false;
    }
    selector.iter().all(|(key, values)| {
        if key == "*" {
            return values.iter().any(|v| v == "*");
        }
        labels
            .get(key)
            .is_some_and(|value| values.iter().any(|v| glob(v, value)))
    })
}

/// The selector as `tctl get` shows it.
pub(crate) fn to_json(selector: &Selector) -> serde_json::Value {
    selector
        .iter()
        .map(|(k, v)| {
            let value = match v.as_slice() {
                [one] => serde_json::Value::String(one.clone()),
                many => many.into(),
            };
            (k.clone(), value)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(pairs: &[(&str, &[&str])]) -> Selector {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn labels_match_as_teleport_matches_them() {
        let labels: BTreeMap<String, String> =
            [("env".to_owned(), "dev".to_owned())].into_iter().collect();
        assert!(!matches(&Selector::new(), &labels), "empty matches nothing");
        assert!(matches(&selector(&[("*", &["*"])]), &labels));
        assert!(matches(&selector(&[("env", &["prod", "dev"])]), &labels));
        assert!(matches(&selector(&[("env", &["d*"])]), &labels));
        assert!(!matches(&selector(&[("env", &["prod"])]), &labels));
        assert!(!matches(
            &selector(&[("env", &["dev"]), ("team", &["*"])]),
            &labels
        ));
    }
}
