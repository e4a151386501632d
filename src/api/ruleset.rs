//! Ruleset files: `GET|PUT|DELETE /{rules,decoders,lists}/files/{name}`.

use super::*;

/// Which ruleset directory a route serves.
pub(super) fn ruleset_root(req: &actix_web::HttpRequest) -> Option<RulesetRoot> {
    let first = req.path().trim_start_matches('/').split('/').next()?;
    match first {
        "rules" => Some(RulesetRoot::Rules),
        "decoders" => Some(RulesetRoot::Decoders),
        "lists" => Some(RulesetRoot::Lists),
        _ => None,
    }
}

/// `GET /{rules,decoders,lists}/files/{name}[?raw=true]`: the file as this node has it (file sync
/// keeps it the master's).
pub(super) async fn get_ruleset_file(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    name: web::Path<String>,
    query: web::Query<FileQuery>,
) -> HttpResponse {
    let Some(root) = ruleset_root(&req) else { return not_found().await };
    if let Err(e) = root.check_name(&name) {
        return HttpResponse::BadRequest().json(error_body(400, &e));
    }
    let path = node.data_dir().join(root.dir()).join(name.as_str());
    match std::fs::read(&path) {
        Ok(bytes) if query.raw.unwrap_or(false) => HttpResponse::Ok().content_type("text/plain").body(bytes),
        // As Wazuh's API: a rule or decoder file as JSON (see [`super::xml`]), a CDB list as one
        // object of its keys and values.
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let parsed = match root {
                RulesetRoot::Lists => Ok(super::listing::list_items(&text)
                    .into_iter()
                    .filter_map(|i| Some((i.get("key")?.as_str()?.to_string(), i.get("value")?.clone())))
                    .collect::<serde_json::Map<_, _>>()
                    .into()),
                RulesetRoot::Rules | RulesetRoot::Decoders => super::xml::to_json(&text),
            };
            match parsed {
                Ok(value) => HttpResponse::Ok().json(envelope(&[value], "File read")),
                Err(why) => {
                    let (code, what) = match root {
                        RulesetRoot::Rules => (1413, "Error reading rules file"),
                        _ => (1501, "Error reading decoders file"),
                    };
                    failed_item(&name, code, &format!("{what}: {why}"), "No file was returned")
                }
            }
        }
        // As Wazuh's API: a failed item with its code for the kind of file, not a 404.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match root {
            RulesetRoot::Rules => failed_item(&name, 1415, "Rules file not found", "No rule file was returned"),
            RulesetRoot::Decoders => {
                failed_item(&name, 1503, "Decoders file not found", "No decoder file was returned")
            }
            RulesetRoot::Lists => failed_item(&name, 1802, "Lists file not found", "No list was returned"),
        },
        Err(e) => HttpResponse::InternalServerError().json(error_body(500, &format!("cannot read the file: {e}"))),
    }
}

/// `PUT /{rules,decoders,lists}/files/{name}[?overwrite=true]` with the file as the body: written
/// into the master's sync roots (a worker forwards it), from where file sync takes it everywhere.
pub(super) async fn put_ruleset_file(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    name: web::Path<String>,
    query: web::Query<FileQuery>,
    body: web::Bytes,
) -> HttpResponse {
    let Some(root) = ruleset_root(&req) else { return not_found().await };
    let request = AdminRequest::PutRulesetFile {
        root,
        name: name.into_inner(),
        content: body.to_vec(),
        overwrite: query.overwrite.unwrap_or(false),
    };
    change(&node, &req, request, "File was successfully uploaded").await
}

/// `DELETE /{rules,decoders,lists}/files/{name}`.
pub(super) async fn delete_ruleset_file(
    node: web::Data<NodeHandle>,
    req: actix_web::HttpRequest,
    name: web::Path<String>,
) -> HttpResponse {
    let Some(root) = ruleset_root(&req) else { return not_found().await };
    if let Some(refusal) = refuse_unauthorized(&req) {
        return refusal;
    }
    let name = name.into_inner();
    let request = AdminRequest::DeleteRulesetFile { root, name: name.clone() };
    match node.admin(request, bearer(&req).to_string()).await {
        Ok(()) => {
            HttpResponse::Ok().json(envelope(&[format!("{}/{name}", root.dir())], "File was successfully deleted"))
        }
        // As Wazuh's API: a file that is not there is a failed item, not a 404.
        Err(ChangeError::Refused(AdminError::NoSuchFile(_))) => {
            failed_item(&name, 1906, "File does not exist", "Could not delete the file")
        }
        Err(e) => change_failed(&e),
    }
}
