//! The OpenAPI 3 document, made from the endpoint table.

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
    // A node whose registry or master is unavailable says so.
    s.push(503);
    s.sort_unstable();
    s.dedup();
    s
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
        let mut responses = serde_json::Map::new();
        for code in statuses(&ep) {
            let mut content = serde_json::Map::new();
            content.insert("application/json".into(), json!({ "schema": { "type": "object" } }));
            if code == 200 && ep.text {
                content.insert("text/plain".into(), json!({ "schema": { "type": "string" } }));
                // A raw XML file (ossec.conf), with the type Wazuh's API gives it.
                content.insert("application/xml".into(), json!({ "schema": { "type": "string" } }));
            }
            if code == 200 && ep.path == AUTHENTICATE {
                content.insert("text/plain".into(), json!({ "schema": { "type": "string" } }));
            }
            responses.insert(code.to_string(), json!({ "description": reason(code), "content": content }));
        }
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
