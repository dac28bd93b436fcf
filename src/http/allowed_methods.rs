//! Which methods a documented path serves, read from the OpenAPI document:
//! a request for a documented path with another method gets 405 with
//! `Allow` (RFC 9110, 15.5.6) rather than the 404 of a path that does not
//! exist. Routes outside the document (the dashboard, webhooks) keep 404.

use std::sync::OnceLock;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One documented path: its segments (`None` for a `{parameter}`) and the
/// methods it serves, upper case.
struct Template {
    segments: Vec<Option<String>>,
    methods: Vec<String>,
}

impl Template {
    fn matches(&self, path: &str) -> bool {
        let mut given = path.trim_start_matches('/').split('/');
        self.segments.iter().all(|want| match (want, given.next()) {
            (_, None) => false,
            (None, Some(segment)) => !segment.is_empty(),
            (Some(literal), Some(segment)) => literal == segment,
        }) && given.next().is_none()
    }
}

fn templates() -> &'static [Template] {
    static TEMPLATES: OnceLock<Vec<Template>> = OnceLock::new();
    TEMPLATES.get_or_init(|| parse(super::openapi::document_json()))
}

fn parse(document: &str) -> Vec<Template> {
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(document) else {
        return Vec::new();
    };
    let Some(paths) = doc.get("paths").and_then(|p| p.as_object()) else {
        return Vec::new();
    };
    paths
        .iter()
        .map(|(path, item)| Template {
            segments: path
                .trim_start_matches('/')
                .split('/')
                .map(|s| (!s.starts_with('{')).then(|| s.to_owned()))
                .collect(),
            methods: METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| m.to_ascii_uppercase())
                .collect(),
        })
        .collect()
}

/// The methods documented for `path` (every template it matches), as an
/// `Allow` value; `None` when no documented path matches or `method` is
/// among them (the request failed for another reason).
pub fn allow_header(path: &str, method: &str) -> Option<String> {
    allowed_in(templates(), path, method)
}

fn allowed_in(templates: &[Template], path: &str, method: &str) -> Option<String> {
    let mut methods: Vec<&str> = templates
        .iter()
        .filter(|t| t.matches(path))
        .flat_map(|t| t.methods.iter().map(String::as_str))
        .collect();
    methods.sort_unstable();
    methods.dedup();
    if methods.is_empty() || methods.contains(&method) {
        return None;
    }
    Some(methods.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"paths":{
        "/admin/orgs":{"get":{},"post":{}},
        "/admin/orgs/{id}":{"get":{},"patch":{},"parameters":[]},
        "/admin/orgs/{id}/tier":{"put":{}}
    }}"#;

    #[test]
    fn documented_paths_answer_their_methods() {
        let t = parse(DOC);
        assert_eq!(
            allowed_in(&t, "/admin/orgs", "DELETE").as_deref(),
            Some("GET, POST")
        );
        assert_eq!(
            allowed_in(&t, "/admin/orgs/acme", "PUT").as_deref(),
            Some("GET, PATCH")
        );
        assert_eq!(
            allowed_in(&t, "/admin/orgs/acme/tier", "GET").as_deref(),
            Some("PUT")
        );
    }

    #[test]
    fn unknown_paths_and_served_methods_are_not_405() {
        let t = parse(DOC);
        assert_eq!(allowed_in(&t, "/admin/nothing", "GET"), None);
        assert_eq!(allowed_in(&t, "/admin/orgs//tier", "GET"), None);
        assert_eq!(allowed_in(&t, "/admin/orgs/acme/tier/x", "GET"), None);
        assert_eq!(allowed_in(&t, "/admin/orgs/acme", "GET"), None);
    }

    #[test]
    fn the_real_document_is_read() {
        assert!(allow_header("/admin/orgs", "DELETE").is_some_and(|a| a.contains("POST")));
    }
}
