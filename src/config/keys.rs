//! Every key the loader reads, from the YAML structs themselves, for docs/config.md's test.

use super::raw::RawConfig;

/// Every key the loader reads, as dotted paths (`onboarding.bound_keypair.signer`,
/// `services.destination.path`; a list's items are entered without an index), in the order the
/// YAML structs declare them. Read from the structs themselves (their serde field lists), so it is
/// the one source of truth: `docs/config.md` is tested against it. Keys that are refused by name
/// (`fips`, `ca_pins`, ...) are included, since the loader knows them.
pub fn keys() -> Vec<String> {
    let mut keys = Vec::new();
    let mut pending: Vec<Vec<&'static str>> = vec![Vec::new()];
    while let Some(path) = pending.pop() {
        for field in fields_at(&path).iter().rev() {
            let mut child = path.clone();
            child.push(field);
            pending.push(child);
        }
        if !path.is_empty() {
            keys.push(path.join("."));
        }
    }
    keys
}

/// The keys of the struct at `path`, in declaration order; none for a scalar. An output
/// (`services.*`, `outputs.*`) has the keys of every kind, each once.
fn fields_at(path: &[&'static str]) -> Vec<&'static str> {
    match path.split_first() {
        Some((&list @ ("services" | "outputs"), rest)) => {
            let mut kinds = KindFields {
                path: rest,
                fields: Vec::new(),
            };
            crate::output::visit_kinds(&mut kinds);
            if list == "services" {
                // The services, which only `services:` holds.
                use crate::output::KindVisitor as _;
                kinds
                    .visit::<crate::service::workload_api::RawWorkloadApi>("workload-identity-api");
            }
            kinds.fields
        }
        _ => probe_fields::<RawConfig>(path),
    }
}

/// The fields of the struct at `path` in the YAML type `T`.
fn probe_fields<T: serde::de::DeserializeOwned>(path: &[&'static str]) -> Vec<&'static str> {
    let found = std::cell::Cell::new(None);
    let _ = T::deserialize(probe::Probe {
        path,
        found: &found,
    });
    found.get().unwrap_or_default().to_vec()
}

/// Collects, over every output kind, the fields at one path of its YAML type.
struct KindFields<'a> {
    path: &'a [&'static str],
    fields: Vec<&'static str>,
}

impl crate::output::KindVisitor for KindFields<'_> {
    fn visit<R: serde::de::DeserializeOwned>(&mut self, _name: &'static str) {
        for field in probe_fields::<R>(self.path) {
            if !self.fields.contains(&field) {
                self.fields.push(field);
            }
        }
    }
}

/// A deserializer that feeds a YAML struct nothing but the way to one key, and records the
/// field names of the struct found there: serde hands them to `deserialize_struct`.
mod probe {
    use std::cell::Cell;

    use serde::de::value::{BorrowedStrDeserializer, Error};
    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    pub(super) struct Probe<'a> {
        /// The keys still to walk down.
        pub(super) path: &'a [&'static str],
        /// The fields of the struct at the end of the path; left `None` for a scalar.
        pub(super) found: &'a Cell<Option<&'static [&'static str]>>,
    }

    fn stop() -> Error {
        de::Error::custom("probe finished")
    }

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(stop())
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            match self.path.split_first() {
                None => {
                    self.found.set(Some(fields));
                    Err(stop())
                }
                Some((key, rest)) => visitor.visit_map(Step {
                    key: Some(key),
                    value: Probe {
                        path: rest,
                        found: self.found,
                    },
                }),
            }
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_some(self)
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_seq(Item(Some(self)))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            unit unit_struct tuple tuple_struct map enum identifier ignored_any
        }
    }

    /// A map of one entry: the next key, and the probe for its value.
    struct Step<'a> {
        key: Option<&'static str>,
        value: Probe<'a>,
    }

    impl<'de> MapAccess<'de> for Step<'_> {
        type Error = Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Error> {
            self.key
                .take()
                .map(|key| seed.deserialize(BorrowedStrDeserializer::new(key)))
                .transpose()
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
            seed.deserialize(Probe {
                path: self.value.path,
                found: self.value.found,
            })
        }
    }

    /// A list of one item, probed like the list itself.
    struct Item<'a>(Option<Probe<'a>>);

    impl<'de> SeqAccess<'de> for Item<'_> {
        type Error = Error;

        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, Error> {
            self.0
                .take()
                .map(|probe| seed.deserialize(probe))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_yaml_structs() {
        let keys = keys();
        for key in [
            "version",
            "proxy_server",
            "onboarding.token",
            "onboarding.bound_keypair.static_private_key_path",
            "onboarding.bound_keypair.tpm_parent",
            "onboarding.ca_pins",
            "storage.type",
            "storage.symlinks",
            "services.destination.path",
            "outputs.roles",
            "fips",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
        // Scalars and lists of scalars have no keys below them.
        assert!(
            !keys
                .iter()
                .any(|k| k.starts_with("version.") || k.starts_with("outputs.roles."))
        );
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), keys.len(), "{keys:?}");
    }
}
