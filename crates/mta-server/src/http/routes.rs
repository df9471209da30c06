//! [`ROUTES`]: every route of the API with its handler. The router and the OpenAPI document are both built
//! from this one table; a test checks each entry against its handler's `#[utoipa::path]` operation.

use utoipa_axum::router::UtoipaMethodRouter;
use utoipa_axum::routes;

use super::{
    cluster, debug, health, inject, openapi, queue, stats, status, suppressions, tls_policy, transfer, HttpState,
};

/// One route of the API.
#[derive(Clone, Copy)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path in axum (and OpenAPI) syntax.
    pub path: &'static str,
    /// Needs an API key (or a loopback client when no keys are configured).
    pub auth: bool,
    /// The handler, with its OpenAPI operation and the schemas that operation names.
    pub endpoint: fn() -> UtoipaMethodRouter<HttpState>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Every route. Order is the OpenAPI document's order.
pub const ROUTES: &[Route] = &[
    Route { method: "POST", path: "/api/v1/messages", auth: true, endpoint: || routes!(inject::post_message) },
    Route { method: "GET", path: "/api/v1/messages/{id}", auth: true, endpoint: || routes!(status::get_message) },
    Route { method: "PUT", path: "/api/v1/debug/faults", auth: true, endpoint: || routes!(debug::put_faults) },
    Route { method: "GET", path: "/api/v1/queue", auth: true, endpoint: || routes!(queue::get_queue) },
    Route {
        method: "POST",
        path: "/api/v1/queue/transfer",
        auth: true,
        endpoint: || routes!(transfer::start_transfer),
    },
    Route {
        method: "GET",
        path: "/api/v1/queue/transfer/{transfer_id}",
        auth: true,
        endpoint: || routes!(transfer::get_transfer),
    },
    Route { method: "POST", path: "/api/v1/queue/import", auth: true, endpoint: || routes!(transfer::import) },
    Route { method: "POST", path: "/api/v1/queue/{domain}/suspend", auth: true, endpoint: || routes!(queue::suspend) },
    Route { method: "POST", path: "/api/v1/queue/{domain}/resume", auth: true, endpoint: || routes!(queue::resume) },
    Route {
        method: "GET",
        path: "/api/v1/tls/policy/{domain}",
        auth: true,
        endpoint: || routes!(tls_policy::get_tls_policy),
    },
    Route {
        method: "GET",
        path: "/api/v1/suppressions",
        auth: true,
        endpoint: || routes!(suppressions::list_suppressions),
    },
    Route {
        method: "PUT",
        path: "/api/v1/suppressions/{email}",
        auth: true,
        endpoint: || routes!(suppressions::put_suppression),
    },
    Route {
        method: "GET",
        path: "/api/v1/suppressions/{email}",
        auth: true,
        endpoint: || routes!(suppressions::get_suppression),
    },
    Route {
        method: "DELETE",
        path: "/api/v1/suppressions/{email}",
        auth: true,
        endpoint: || routes!(suppressions::delete_suppression),
    },
    Route { method: "GET", path: "/api/v1/cluster", auth: true, endpoint: || routes!(cluster::get_cluster) },
    Route { method: "GET", path: "/api/v1/stats/timeseries", auth: true, endpoint: || routes!(stats::get_timeseries) },
    Route { method: "GET", path: "/api/v1/senders", auth: true, endpoint: || routes!(queue::get_senders) },
    Route { method: "GET", path: "/api/v1/openapi.json", auth: true, endpoint: || routes!(openapi::get_openapi) },
    Route { method: "GET", path: "/api/v1/health", auth: true, endpoint: || routes!(health::health) },
    Route { method: "GET", path: "/health/live", auth: false, endpoint: || routes!(health::live) },
    Route { method: "GET", path: "/health/ready", auth: false, endpoint: || routes!(health::ready) },
    Route { method: "GET", path: "/metrics", auth: false, endpoint: || routes!(health::metrics_text) },
];
