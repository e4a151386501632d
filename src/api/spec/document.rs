//! The OpenAPI 3 document, made from the endpoint table, with Wazuh's response schemas for the
//! operations Wazuh has too.

use super::*;

/// The statuses an endpoint may answer with (JSON bodies, Wazuh's error format for errors).
fn statuses(ep: &Endpoint) -> Vec<u16> {
    let mut s = vec![200, 400, 404, 405, 413, 421];
    if ep.auth {
        s.extend([401, 403]);
    }
    if ep.path == AUTHENTICATE {
        // Sign-in: a blocked address (403), too many checks at once (429).
        s.extend([401, 403, 429]);
    }
    if ep.path.starts_with("/security/users") && ep.method != "get" {
        // Hashing a new password takes a sign-in's place.
        s.push(429);
    }
    if ep.method == "post" && ep.path == "/security/users" {
        s.push(500);
    }
    if ep.path.ends_with("/stats") {
        // A totals file analysisd wrote that does not read (Wazuh's 1309).
        s.push(500);
    }
    // A node whose registry or master is unavailable says so.
    s.push(503);
    s.sort_unstable();
    s.dedup();
    s
}

/// Wazuh's responses by operation (`<method> <path>`, each `{param}` written `{}`) and the
/// components they refer to, made from Wazuh's OpenAPI document by `scripts/wazuh-responses.py`
/// (`scripts/wazuh-api-check.sh` fails when this copy is stale).
const WAZUH_RESPONSES: &str = include_str!("wazuh-responses.json");

fn wazuh_responses() -> &'static serde_json::Value {
    static PARSED: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    PARSED.get_or_init(|| serde_json::from_str(WAZUH_RESPONSES).unwrap_or(serde_json::Value::Null))
}

/// `method path`, with every `{param}` written `{}`: how an operation is named across documents.
fn operation_key(method: &str, path: &str) -> String {
    let mut key = format!("{method} ");
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                key.push('{');
            }
            '}' => {
                in_param = false;
                key.push('}');
            }
            _ if in_param => {}
            c => key.push(c),
        }
    }
    key
}

/// The content types a 200 of `ep` may have besides JSON, and their schemas.
fn extra_content(ep: &Endpoint) -> Vec<(&'static str, serde_json::Value)> {
    let text = || serde_json::json!({ "schema": { "type": "string" } });
    let mut extra = Vec::new();
    if ep.text {
        extra.push(("text/plain", text()));
        // A raw XML file (ossec.conf), with the type Wazuh's API gives it.
        extra.push(("application/xml", text()));
    }
    if ep.path == AUTHENTICATE {
        extra.push(("text/plain", text()));
    }
    extra
}

/// The responses of `ep`: Wazuh's own for an operation Wazuh has (so the shared operations are
/// checked against Wazuh's schemas), with the statuses this API adds; a JSON object otherwise.
fn responses(ep: &Endpoint) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::json;
    let mut responses =
        wazuh_responses()["operations"][operation_key(ep.method, ep.path)].as_object().cloned().unwrap_or_default();
    for code in statuses(ep) {
        let entry = responses
            .entry(code.to_string())
            .or_insert_with(|| json!({ "description": reason(code), "content": { "application/json": { "schema": { "type": "object" } } } }));
        if code != 200 {
            continue;
        }
        // Wazuh's 200 of a raw read lists JSON only; a `$ref`'d response is left as it is.
        if let Some(content) = entry.get_mut("content").and_then(|c| c.as_object_mut()) {
            for (kind, schema) in extra_content(ep) {
                content.entry(kind).or_insert(schema);
            }
        }
    }
    responses
}

/// The OpenAPI 3 document of [`endpoints`].
pub fn document() -> serde_json::Value {
    use serde_json::json;
    let mut paths = serde_json::Map::new();
    for ep in endpoints() {
        let params: Vec<_> = ep
            .params
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "in": match p.at { In::Path => "path", In::Query => "query" },
                    "required": matches!(p.at, In::Path),
                    "description": p.doc,
                    "schema": { "type": p.kind },
                })
            })
            .collect();
        let responses = responses(&ep);
        let mut op = json!({
            "summary": ep.summary,
            "operationId": format!("{}{}", ep.method, ep.path.replace(['/', '{', '}', '.'], "_")),
            "parameters": params,
            "responses": responses,
        });
        if ep.auth {
            op["security"] = json!([{ "bearer": [] }]);
        } else if ep.path == AUTHENTICATE {
            op["security"] = json!([{ "basic": [] }]);
        } else {
            op["security"] = json!([]);
        }
        match ep.body {
            Body::None => {}
            Body::Json(fields) => {
                let properties: serde_json::Map<String, serde_json::Value> =
                    fields.iter().map(|f| (f.to_string(), json!({ "type": "string" }))).collect();
                op["requestBody"] = json!({
                    "required": true,
                    "content": { "application/json": { "schema": {
                        "type": "object",
                        "properties": properties,
                        "required": fields,
                    } } },
                });
            }
            Body::Text => {
                op["requestBody"] = json!({
                    "required": true,
                    "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } },
                });
            }
        }
        let entry = paths.entry(ep.path.to_string()).or_insert_with(|| json!({}));
        entry[ep.method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "wazuh-multi-node API",
            "version": crate::node::handle::VERSION,
            "description": "Wazuh-compatible REST API of a wazuh-multi-node node. Errors: {\"title\", \"detail\", \"error\"}.",
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
                "basic": { "type": "http", "scheme": "basic" },
            },
            "schemas": wazuh_responses()["components"]["schemas"],
            "responses": wazuh_responses()["components"]["responses"],
        },
        "paths": paths,
    })
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "Done",
        400 => "Bad request",
        401 => "No valid credentials",
        403 => "The caller's role may not do this",
        404 => "No such item",
        405 => "Method not allowed",
        413 => "Too large",
        421 => "This API does not serve that host",
        429 => "Too many at once, or too many failures from this address",
        500 => "This node failed",
        503 => "Unavailable now",
        _ => "Error",
    }
}

/// `GET /api/openapi.json`.
pub async fn openapi() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(document())
}
