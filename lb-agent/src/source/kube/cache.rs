//! From reflector stores to model objects, converting each object version once. An object the
//! proxy cannot use is reported, and its last good version stays in force (as with manifest
//! files), so an odd update never flushes a service that was being served.

use std::{collections::HashMap, sync::Arc};

use kube::ResourceExt as _;

use crate::{
    model::{Kind, ObjectKey},
    source::convert::{ConvertError, Converted},
};

#[derive(Debug)]
struct Entry<T> {
    resource_version: Option<String>,
    /// The last version that converted.
    good: Option<T>,
    /// Why the current version did not convert.
    error: Option<ConvertError>,
}

/// Conversions of the objects of one kind, by object.
#[derive(Debug)]
pub struct Converter<T> {
    kind: Kind,
    entries: HashMap<ObjectKey, Entry<T>>,
}

/// What [`Converter::update`] produced besides the values.
#[derive(Debug, Default)]
pub struct Notes {
    /// Reported on every update while the object stays unusable.
    pub problems: Vec<String>,
    /// Reported once per object version.
    pub warnings: Vec<String>,
}

impl<T: Clone> Converter<T> {
    /// An empty cache for objects of `kind`.
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            entries: HashMap::new(),
        }
    }

    /// Converts the objects not seen at their current resource version, forgets objects that
    /// are gone, and returns the usable values (sorted by object, for stable output).
    pub fn update<K: kube::Resource>(
        &mut self,
        objects: &[Arc<K>],
        convert: impl Fn(&K) -> Result<Converted<T>, ConvertError>,
        notes: &mut Notes,
    ) -> Vec<T> {
        let mut seen = HashMap::with_capacity(objects.len());
        for obj in objects {
            let key = ObjectKey {
                kind: self.kind,
                namespace: obj.namespace().unwrap_or_default(),
                name: obj.name_any(),
            };
            let rv = obj.resource_version();
            let entry = self.entries.entry(key.clone()).or_insert(Entry {
                resource_version: None,
                good: None,
                error: None,
            });
            if entry.resource_version.is_none() || entry.resource_version != rv {
                entry.resource_version = rv;
                match convert(obj) {
                    Ok(converted) => {
                        notes.warnings.extend(
                            converted
                                .warnings
                                .into_iter()
                                .map(|w| format!("{key}: {w}")),
                        );
                        entry.good = Some(converted.value);
                        entry.error = None;
                    }
                    Err(e) => entry.error = Some(e),
                }
            }
            if let Some(e) = &entry.error {
                notes.problems.push(if entry.good.is_some() {
                    format!("{key}: {e}; keeping its last good version")
                } else {
                    format!("{key}: {e}")
                });
            }
            seen.insert(key, ());
        }
        self.entries.retain(|k, _| seen.contains_key(k));
        let mut values: Vec<(&ObjectKey, &T)> = self
            .entries
            .iter()
            .filter_map(|(k, e)| e.good.as_ref().map(|g| (k, g)))
            .collect();
        values.sort_by(|a, b| a.0.cmp(b.0));
        values.into_iter().map(|(_, v)| v.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{Service as K8sService, ServicePort, ServiceSpec},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;
    use crate::source::convert;

    fn svc(name: &str, rv: &str, ip: &str) -> Arc<K8sService> {
        Arc::new(K8sService {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ports: Some(vec![ServicePort {
                    port: 80,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        })
    }

    #[test]
    fn bad_versions_keep_the_last_good_one_and_deleted_objects_go() {
        let mut c = Converter::new(Kind::Service);
        let conv = |s: &K8sService| convert::service(s, None, false);
        let mut notes = Notes::default();
        let out = c.update(
            &[svc("a", "1", "10.96.0.1"), svc("b", "1", "10.96.0.2")],
            conv,
            &mut notes,
        );
        assert_eq!(out.len(), 2);
        assert!(notes.problems.is_empty());

        let mut notes = Notes::default();
        let out = c.update(
            &[svc("a", "2", "not-an-ip"), svc("b", "1", "10.96.0.2")],
            conv,
            &mut notes,
        );
        assert_eq!(
            out[0].cluster_ips,
            ["10.96.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(notes.problems.len(), 1);
        assert!(
            notes.problems[0].starts_with("Service default/a: ")
                && notes.problems[0].ends_with("keeping its last good version"),
            "{:?}",
            notes.problems
        );

        let mut notes = Notes::default();
        let out = c.update(&[svc("c", "3", "bad")], conv, &mut notes);
        assert!(out.is_empty(), "a and b are gone, c never converted");
        assert_eq!(notes.problems.len(), 1);
        assert!(
            !notes.problems[0].contains("last good"),
            "{:?}",
            notes.problems
        );
    }
}
