//! The route table: every route of `docs/api/openapi.yaml`, one handler
//! each. A test keeps the table and the file in step.

use super::{containers, events, images, networks, system, volumes, Route};

const fn route(method: &'static str, path: &'static str, handler: super::Handler) -> Route {
    Route {
        method,
        path,
        handler,
    }
}

pub static ROUTES: &[Route] = &[
    route("GET", "/v1/system/info", system::info),
    route("POST", "/v1/system/shutdown", system::shutdown),
    route("GET", "/v1/events", events::stream),
    route("GET", "/v1/containers", containers::list),
    route("POST", "/v1/containers", containers::create),
    route("POST", "/v1/containers/prune", containers::prune),
    route("GET", "/v1/containers/{id}", containers::inspect),
    route("DELETE", "/v1/containers/{id}", containers::remove),
    route("POST", "/v1/containers/{id}/start", containers::start),
    route("POST", "/v1/containers/{id}/attach", containers::attach),
    route("GET", "/v1/containers/{id}/logs", containers::logs),
    route("POST", "/v1/containers/{id}/stop", containers::stop),
    route("POST", "/v1/containers/{id}/kill", containers::kill),
    route("POST", "/v1/containers/{id}/wait", containers::wait),
    route("POST", "/v1/containers/{id}/restart", containers::restart),
    route("POST", "/v1/containers/{id}/pause", containers::pause),
    route("POST", "/v1/containers/{id}/unpause", containers::unpause),
    route("POST", "/v1/containers/{id}/rename", containers::rename),
    route("POST", "/v1/containers/{id}/update", containers::update),
    route("GET", "/v1/containers/{id}/stats", containers::stats),
    route("GET", "/v1/containers/{id}/top", containers::top),
    route("POST", "/v1/containers/{id}/resize", containers::resize),
    route("POST", "/v1/containers/{id}/exec", containers::exec),
    route(
        "GET",
        "/v1/containers/{id}/exec/{exec_id}",
        containers::exec_inspect,
    ),
    route("POST", "/v1/containers/{id}/copy-out", containers::copy_out),
    route("POST", "/v1/containers/{id}/copy-in", containers::copy_in),
    route("POST", "/v1/containers/{id}/export", containers::export),
    route("GET", "/v1/networks", networks::list),
    route("POST", "/v1/networks", networks::create),
    route("POST", "/v1/networks/prune", networks::prune),
    route("GET", "/v1/networks/{name}", networks::inspect),
    route("DELETE", "/v1/networks/{name}", networks::remove),
    route("GET", "/v1/volumes", volumes::list),
    route("POST", "/v1/volumes", volumes::create),
    route("POST", "/v1/volumes/prune", volumes::prune),
    route("GET", "/v1/volumes/{name}", volumes::inspect),
    route("DELETE", "/v1/volumes/{name}", volumes::remove),
    route("GET", "/v1/images", images::list),
    route("DELETE", "/v1/images", images::remove),
    route("POST", "/v1/images/load", images::load),
    route("POST", "/v1/images/import", images::import),
    route("POST", "/v1/images/pull", images::pull),
    route("POST", "/v1/images/push", images::push),
    route("GET", "/v1/images/inspect", images::inspect),
    route("POST", "/v1/images/tag", images::tag),
    route("POST", "/v1/images/prune", images::prune),
    route("GET", "/v1/images/save", images::save),
    route("POST", "/v1/registry/login", images::login),
];

#[cfg(test)]
mod tests {
    use super::ROUTES;
    use std::collections::BTreeSet;

    fn openapi() -> serde_yaml::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api/openapi.yaml");
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// `docs/api/openapi.yaml` is the API's one description: every route
    /// of the table is in it, and it has no route the table lacks.
    #[test]
    fn the_route_table_and_the_api_description_agree() {
        let doc = openapi();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_mapping().unwrap() {
            let path = path.as_str().unwrap();
            for (method, _) in item.as_mapping().unwrap() {
                let method = method.as_str().unwrap();
                if ["get", "post", "put", "delete", "patch", "head", "options"].contains(&method) {
                    documented.insert(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        let served: BTreeSet<String> = ROUTES
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert_eq!(served.len(), ROUTES.len(), "a route is in the table twice");
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "served but not in openapi.yaml: {undocumented:?}; in openapi.yaml but not served: {unserved:?}"
        );
    }

    /// Every operation lists the statuses the router itself may answer:
    /// 400 where it takes parameters a client can get wrong, 404 where it
    /// names a container, and the errors a helper it needs may cause.
    #[test]
    fn operations_list_the_statuses_of_their_parameters() {
        let doc = openapi();
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method.to_lowercase().as_str()];
            let responses = op["responses"].as_mapping().unwrap();
            let has = |s: &str| responses.contains_key(serde_yaml::Value::from(s));
            if r.path.contains("{id}") {
                assert!(
                    has("404") && has("400"),
                    "{} {}: 400 and 404 for the container",
                    r.method,
                    r.path
                );
            }
            let params = op["parameters"].as_sequence().cloned().unwrap_or_default();
            let takes_query = params.iter().any(|p| p["in"].as_str() == Some("query"));
            if takes_query || op.get("requestBody").is_some() {
                assert!(
                    has("400"),
                    "{} {}: takes input, lists no 400",
                    r.method,
                    r.path
                );
            }
        }
    }

    /// The event kinds of the description are the server's.
    #[test]
    fn event_actions_are_described() {
        let doc = openapi();
        let listed: Vec<String> = doc["components"]["schemas"]["Event"]["properties"]["action"]
            ["enum"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let known: Vec<String> = vessel_api::types::EventAction::ALL
            .iter()
            .map(|a| a.as_str().to_string())
            .collect();
        assert_eq!(listed, known);
    }
}
