//! The OpenAPI 3 document served at `GET /api/v1/openapi.json`, generated from [`ROUTES`]: each entry's
//! handler carries its operation (`#[utoipa::path]`: parameters, request body, responses with their schemas
//! and headers); the entry's `auth` flag adds the bearer security requirement and the `401`/`403`/`429`
//! answers of the auth layer, or marks the route public.

use std::sync::LazyLock;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, PathItem, Paths};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, HeaderBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr,
    Response as DocResponse, ResponseBuilder,
};

use super::error::ApiError;
use super::routes::ROUTES;

/// What the document says about the whole API.
const DESCRIPTION: &str = "Injection, message status, queues, health and metrics of the MTA. Errors are \
    `{\"error\": {\"code\", \"message\", \"field\"}}`. Every `/api/v1` route needs `Authorization: Bearer <key>` \
    unless `http.api_keys` is empty and the client is on loopback.";

/// Name of the bearer security scheme.
const BEARER: &str = "bearer";

/// One answer of the auth layer ([`super::authorize`]) to a route that needs a key.
struct AuthAnswer {
    /// HTTP status.
    status: &'static str,
    /// Its name among the document's reusable responses.
    name: &'static str,
    description: &'static str,
    /// A header it carries: name, description, schema type.
    header: Option<(&'static str, &'static str, Type)>,
}

/// What every route that needs a key may answer before its handler runs.
const AUTH_ANSWERS: &[AuthAnswer] = &[
    AuthAnswer {
        status: "401",
        name: "Unauthorized",
        description: "Missing or malformed `Authorization: Bearer` header (keys are configured) (`unauthorized`).",
        header: Some(("WWW-Authenticate", "`Bearer`.", Type::String)),
    },
    AuthAnswer {
        status: "403",
        name: "Forbidden",
        description: "Unknown API key (`invalid_api_key`), or no keys are configured and the client is not on \
                      loopback (`forbidden`).",
        header: None,
    },
    AuthAnswer {
        status: "429",
        name: "RateLimited",
        description: "Per-key rate limit (`http.rate_limit_per_key`) exceeded (`rate_limited`).",
        header: Some(("Retry-After", "Seconds to wait before retrying.", Type::Integer)),
    },
];

/// The document of every route in [`ROUTES`].
pub fn document() -> OpenApi {
    let mut paths = Paths::new();
    let mut components = ComponentsBuilder::new()
        .security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key whose `sha256:<hex>` hash (from `mta-server hash-key`) is in `http.api_keys`.",
                    ))
                    .build(),
            ),
        )
        .build();
    for answer in AUTH_ANSWERS {
        components.responses.insert(answer.name.to_string(), RefOr::T(error_response(answer)));
    }
    for route in ROUTES {
        let (schemas, mut route_paths, _handler) = (route.endpoint)();
        for item in route_paths.paths.values_mut() {
            for operation in operations(item) {
                if route.auth {
                    for answer in AUTH_ANSWERS {
                        let reference = RefOr::Ref(Ref::from_response_name(answer.name));
                        operation.responses.responses.insert(answer.status.to_string(), reference);
                    }
                } else {
                    // An empty list overrides the document's bearer requirement: no key needed.
                    operation.security = Some(Vec::new());
                }
            }
        }
        paths.merge(route_paths);
        components.schemas.extend(schemas);
    }
    OpenApiBuilder::new()
        .info(InfoBuilder::new().title("MTA HTTP API").version("1.0.0").description(Some(DESCRIPTION)))
        .paths(paths)
        .components(Some(components))
        .security(Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]))
        .build()
}

/// Every operation of a path item.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// An auth answer with the `Error` schema and its header.
fn error_response(answer: &AuthAnswer) -> DocResponse {
    let mut response = ResponseBuilder::new()
        .description(answer.description)
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("Error"))).build());
    if let Some((name, description, schema_type)) = answer.header.clone() {
        let header =
            HeaderBuilder::new().schema(ObjectBuilder::new().schema_type(schema_type)).description(Some(description));
        response = response.header(name, header.build());
    }
    response.build()
}

/// The document as served, made once.
static DOCUMENT: LazyLock<Option<String>> = LazyLock::new(|| match document().to_pretty_json() {
    Ok(text) => Some(text),
    Err(e) => {
        tracing::error!(error = %e, "the OpenAPI document could not be serialized");
        None
    }
});

/// The handler.
#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "getOpenApi",
    summary = "This document.",
    responses((status = 200, description = "OpenAPI 3 document.", body = Object)))]
pub async fn get_openapi() -> Response {
    match DOCUMENT.as_deref() {
        Some(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        None => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the OpenAPI document is unavailable")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

    fn served() -> Value {
        let text = DOCUMENT.as_deref().expect("the document serializes");
        serde_json::from_str(text).expect("the document is JSON")
    }

    #[test]
    fn every_route_is_documented_with_its_method_and_every_documented_path_is_routed() {
        let doc = served();
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "an OpenAPI 3 document");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in METHODS {
                if item.get(*method).is_some() {
                    documented.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        let routed: BTreeSet<(String, String)> =
            ROUTES.iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
        assert_eq!(routed.len(), ROUTES.len(), "a route is in the table twice");
        assert_eq!(routed, documented, "the route table and the document differ");
    }

    #[test]
    fn each_entry_handler_is_the_operation_of_its_own_method_and_path() {
        for route in ROUTES {
            let (_, paths, _) = (route.endpoint)();
            let operations: Vec<(String, String)> = paths
                .paths
                .iter()
                .flat_map(|(path, item)| {
                    let item = serde_json::to_value(item).expect("a path item serializes");
                    METHODS
                        .iter()
                        .filter(move |m| item.get(**m).is_some())
                        .map(|m| (m.to_uppercase(), path.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(operations, vec![(route.method.to_string(), route.path.to_string())], "{route:?}");
        }
    }

    #[test]
    fn auth_routes_carry_the_auth_answers_and_public_routes_need_no_key() {
        let doc = served();
        assert_eq!(doc["security"], serde_json::json!([{"bearer": []}]));
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        for route in ROUTES {
            let op = &doc["paths"][route.path][route.method.to_lowercase()];
            for answer in AUTH_ANSWERS {
                let status = answer.status;
                assert_eq!(op["responses"].get(status).is_some(), route.auth, "{route:?} {status}");
            }
            assert_eq!(op.get("security") == Some(&serde_json::json!([])), !route.auth, "{route:?}");
            assert!(op["operationId"].is_string() && op["summary"].is_string(), "{route:?}");
            assert!(op["responses"].as_object().is_some_and(|r| r.keys().any(|s| s.starts_with('2'))), "{route:?}");
        }
    }

    /// Every `$ref` in `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = served();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 20, "{found:?}");
        for r in found {
            let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("external reference {r}"));
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }

    #[test]
    fn errors_retry_after_and_injection_bodies_are_described() {
        let doc = served();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["Error"]["required"], serde_json::json!(["error"]));
        let inject = &doc["paths"]["/api/v1/messages"]["post"];
        let statuses: BTreeSet<&str> =
            inject["responses"].as_object().expect("responses").keys().map(|k| k.as_str()).collect();
        for status in ["202", "400", "401", "403", "408", "409", "413", "415", "422", "429", "503"] {
            assert!(statuses.contains(status), "inject lacks {status}");
        }
        assert!(inject["responses"]["503"]["headers"]["Retry-After"].is_object());
        assert_eq!(inject["parameters"][0]["name"], "Idempotency-Key");
        assert_eq!(inject["parameters"][0]["in"], "header");
        assert_eq!(
            inject["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/InjectRequest"
        );
        // Raw and structured content are both described.
        let content = &schemas["Content"]["oneOf"];
        assert_eq!(content[0]["type"], "string");
        assert_eq!(content[1]["$ref"], "#/components/schemas/StructuredContent");
        assert!(doc["components"]["responses"]["RateLimited"]["headers"]["Retry-After"].is_object());
    }
}
