//! The files under `deploy/` as the tests read them: the Grafana dashboard's queries with
//! their template variables substituted, and the Prometheus configuration adapted to a test.

use std::path::PathBuf;

/// `deploy/` of the workspace.
pub fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
}

/// One query of the dashboard.
#[derive(Clone, Debug)]
pub struct DashboardQuery {
    /// Where it is: panel title and refId, or the annotation's name.
    pub origin: String,
    /// The expression as written in the dashboard.
    pub expr: String,
    /// Labels its `legendFormat` (or an annotation's `titleFormat`/`textFormat`/`tagKeys`)
    /// shows: every series of the answer must carry them.
    pub shown_labels: Vec<String>,
}

/// A query variable of the dashboard (`label_values(SELECTOR, LABEL)`).
#[derive(Clone, Debug)]
pub struct DashboardVariable {
    pub name: String,
    pub selector: String,
    pub label: String,
}

/// The dashboard's JSON.
pub fn dashboard() -> serde_json::Value {
    let path = deploy_dir().join("grafana/canary.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// `{{label}}` names in a legend or title format.
fn template_labels(format: &str) -> Vec<String> {
    format
        .split("{{")
        .skip(1)
        .filter_map(|rest| rest.split_once("}}").map(|(l, _)| l.trim().to_string()))
        .collect()
}

/// Every `expr` in the dashboard, wherever it is (panels, nested rows, annotations), so that
/// a query added anywhere is covered.
pub fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<DashboardQuery> {
    fn walk(v: &serde_json::Value, origin: &str, out: &mut Vec<DashboardQuery>) {
        match v {
            serde_json::Value::Object(map) => {
                let here = match (map.get("title"), map.get("name"), map.get("refId")) {
                    (_, _, Some(r)) => format!("{origin} / {}", r.as_str().unwrap_or("?")),
                    (Some(t), _, _) => t.as_str().unwrap_or("?").to_string(),
                    (None, Some(n), _) => format!("annotation {}", n.as_str().unwrap_or("?")),
                    _ => origin.to_string(),
                };
                if let Some(expr) = map.get("expr").and_then(|e| e.as_str()) {
                    let mut shown = Vec::new();
                    for key in ["legendFormat", "titleFormat", "textFormat"] {
                        if let Some(f) = map.get(key).and_then(|f| f.as_str()) {
                            shown.extend(template_labels(f));
                        }
                    }
                    if let Some(keys) = map.get("tagKeys").and_then(|k| k.as_str()) {
                        shown.extend(
                            keys.split(',')
                                .map(str::trim)
                                .filter(|k| !k.is_empty())
                                .map(String::from),
                        );
                    }
                    shown.sort();
                    shown.dedup();
                    out.push(DashboardQuery {
                        origin: here.clone(),
                        expr: expr.to_string(),
                        shown_labels: shown,
                    });
                }
                for (k, child) in map {
                    if k != "expr" {
                        walk(child, &here, out);
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    walk(item, origin, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "dashboard", &mut out);
    out
}

/// The dashboard's query variables.
pub fn dashboard_variables(dashboard: &serde_json::Value) -> Vec<DashboardVariable> {
    dashboard["templating"]["list"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|v| v["type"] == "query")
                .map(|v| {
                    let name = v["name"].as_str().unwrap_or_default().to_string();
                    let query = v["query"]["query"]
                        .as_str()
                        .or_else(|| v["query"].as_str())
                        .unwrap_or_default();
                    let inner = query
                        .strip_prefix("label_values(")
                        .and_then(|q| q.strip_suffix(')'))
                        .unwrap_or_else(|| {
                            panic!("variable {name}: expected label_values(SELECTOR, LABEL), got {query:?}")
                        });
                    let (selector, label) = inner.rsplit_once(',').unwrap_or_else(|| {
                        panic!("variable {name}: label_values needs a selector and a label")
                    });
                    DashboardVariable {
                        name,
                        selector: selector.trim().to_string(),
                        label: label.trim().to_string(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Replaces Grafana's variables: the dashboard's own (`$name`, `${name}`) from `values`, and
/// `$__rate_interval` / `$__interval`. Panics on a variable left over, so a new one must be
/// given a value here before the test passes.
pub fn substitute(expr: &str, values: &[(&str, &str)], rate_interval: &str) -> String {
    let mut out = expr
        .replace("$__rate_interval", rate_interval)
        .replace("${__rate_interval}", rate_interval)
        .replace("$__interval", rate_interval)
        .replace("${__interval}", rate_interval);
    for (name, value) in values {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    assert!(
        !out.contains('$'),
        "a dashboard variable has no test value in {out:?} (from {expr:?})"
    );
    out
}

/// `deploy/prometheus/prometheus.yml` with each `(from, to)` replacement applied; panics if a
/// `from` is not in the file, so that a change of the file is noticed here.
pub fn prometheus_config(replacements: &[(&str, &str)]) -> String {
    let path = deploy_dir().join("prometheus/prometheus.yml");
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for (from, to) in replacements {
        assert!(
            text.contains(from),
            "{} no longer contains {from:?}",
            path.display()
        );
        text = text.replace(from, to);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_found_everywhere_with_the_labels_they_show() {
        let d = serde_json::json!({
            "annotations": {"list": [{"name": "Decisions", "expr": "a", "titleFormat": "{{action}}", "tagKeys": "action,reason"}]},
            "panels": [
                {"title": "P", "targets": [{"refId": "A", "expr": "b", "legendFormat": "{{group}} {{ class }}"}]},
                {"title": "Row", "panels": [{"title": "Inner", "targets": [{"refId": "B", "expr": "c"}]}]}
            ]
        });
        let q = dashboard_queries(&d);
        let find = |e: &str| q.iter().find(|x| x.expr == e).unwrap().clone();
        assert_eq!(find("a").shown_labels, vec!["action", "reason"]);
        assert_eq!(find("a").origin, "annotation Decisions");
        assert_eq!(find("b").shown_labels, vec!["class", "group"]);
        assert_eq!(find("b").origin, "P / A");
        assert_eq!(find("c").origin, "Inner / B");
    }

    #[test]
    fn substitution_covers_both_spellings_and_refuses_unknown_variables() {
        assert_eq!(
            substitute(
                "x{service=\"$service\",i=\"${instance}\"}[$__rate_interval]",
                &[("service", "s"), ("instance", "i:1")],
                "5s"
            ),
            "x{service=\"s\",i=\"i:1\"}[5s]"
        );
        let unknown = std::panic::catch_unwind(|| substitute("x{a=\"$node\"}", &[], "5s"));
        assert!(unknown.is_err());
    }
}
