//! The route table: every route of `docs/api/openapi.yaml`, one handler
//! each. A test keeps the table and the file in step.

use super::{containers, events, images, networks, system, Route};

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
    route("GET", "/v1/containers/{id}", containers::inspect),
    route("DELETE", "/v1/containers/{id}", containers::remove),
    route("POST", "/v1/containers/{id}/start", containers::start),
    route("POST", "/v1/containers/{id}/attach", containers::attach),
    route("GET", "/v1/containers/{id}/logs", containers::logs),
    route("POST", "/v1/containers/{id}/stop", containers::stop),
    route("POST", "/v1/containers/{id}/kill", containers::kill),
    route("POST", "/v1/containers/{id}/wait", containers::wait),
    route("GET", "/v1/networks", networks::list),
    route("POST", "/v1/networks", networks::create),
    route("POST", "/v1/networks/prune", networks::prune),
    route("GET", "/v1/networks/{name}", networks::inspect),
    route("DELETE", "/v1/networks/{name}", networks::remove),
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
