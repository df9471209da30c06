//! `GET /api/v1/cluster`: the fleet as this node sees it (Redis reachability, every live node's heartbeat).

use axum::extract::State;
use axum::Json;
use mta_core::cluster::ClusterView;

use super::HttpState;

/// `GET /api/v1/cluster`.
#[utoipa::path(get, path = "/api/v1/cluster", operation_id = "getCluster",
    summary = "Redis reachability and the nodes alive at the last heartbeat.",
    description = "`redis` is `off` on a single node (no `cluster.redis_url`), `unreachable` while this node runs on local limits (the nodes are then as last seen).",
    responses((status = 200, description = "The cluster view.", body = ClusterView)))]
pub async fn get_cluster(State(state): State<HttpState>) -> Json<ClusterView> {
    Json(state.inner.cluster.as_ref().map(|c| c.view()).unwrap_or_else(ClusterView::off))
}
