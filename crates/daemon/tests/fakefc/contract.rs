//! Firecracker's API contract, from its own Swagger file: which method and
//! path exist, what body each takes (required fields, types, enums, no
//! unknown fields), which status codes it answers.

use std::path::PathBuf;

use serde_json::Value;

/// The Swagger file, as the reference README places it beside the clone.
pub fn yaml_path() -> PathBuf {
    std::env::var_os("BANGER_FIRECRACKER_API_YAML")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/reference/firecracker-api.yaml")
        })
}

pub struct Contract {
    doc: Value,
}

/// The operation a request matched.
pub struct Matched<'a> {
    /// The path template (`/drives/{drive_id}`).
    pub template: String,
    pub op: &'a Value,
}

impl Contract {
    /// Loads the file, or says why it cannot (the tests then skip).
    pub fn load() -> Result<Contract, String> {
        let path = yaml_path();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{} is absent ({e})", path.display()))?;
        let doc = super::yaml::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if doc["swagger"] != "2.0" || !doc["paths"].is_object() {
            return Err(format!("{} is not a Swagger 2.0 file", path.display()));
        }
        Ok(Contract { doc })
    }

    pub fn version(&self) -> &str {
        self.doc["info"]["version"].as_str().unwrap_or("?")
    }

    /// The operation `method path` names, with the path's parameters.
    pub fn find(
        &self,
        method: &str,
        path: &str,
    ) -> Result<(Matched<'_>, Vec<(String, String)>), String> {
        let paths = self.doc["paths"].as_object().ok_or("no paths")?;
        for (template, item) in paths {
            let Some(params) = match_path(template, path) else {
                continue;
            };
            return match item.get(method.to_ascii_lowercase()) {
                Some(op) => Ok((
                    Matched {
                        template: template.clone(),
                        op,
                    },
                    params,
                )),
                None => Err(format!("{method} is not an operation of {template}")),
            };
        }
        Err(format!("no path {path} in the API"))
    }

    /// Checks `body` against the operation's body parameter, and ids in the
    /// body against the path's parameters.
    pub fn check_body(
        &self,
        m: &Matched<'_>,
        params: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<(), String> {
        let declared = m.op["parameters"].as_array().cloned().unwrap_or_default();
        let body_param = declared.iter().find(|p| p["in"] == "body");
        match (body_param, body) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(format!("{} takes no body", m.template)),
            (Some(p), None) if p["required"] == true => Err(format!("{} needs a body", m.template)),
            (Some(_), None) => Ok(()),
            (Some(p), Some(b)) => {
                self.validate(b, &p["schema"], "body")?;
                for (name, value) in params {
                    if let Some(v) = b.get(name) {
                        if v != value {
                            return Err(format!("body {name} {v} is not the path's {value:?}"));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> Result<&'a Value, String> {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r
                    .strip_prefix("#/definitions/")
                    .ok_or(format!("odd $ref {r}"))?;
                let def = &self.doc["definitions"][name];
                if def.is_null() {
                    return Err(format!("$ref {r} is not defined"));
                }
                Ok(def)
            }
            None => Ok(schema),
        }
    }

    /// `value` against `schema`: type, required fields, no unknown fields,
    /// enums, minimum, array items.
    pub fn validate(&self, value: &Value, schema: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema)?;
        if let Some(options) = schema["enum"].as_array() {
            if !options.contains(value) {
                return Err(format!("{at} = {value} is not one of {options:?}"));
            }
        }
        let ty = schema["type"]
            .as_str()
            .unwrap_or(if schema["properties"].is_object() {
                "object"
            } else {
                ""
            });
        let ok = match ty {
            "object" => value.is_object(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "array" => value.is_array(),
            _ => true,
        };
        if !ok {
            return Err(format!("{at} = {value} is not of type {ty}"));
        }
        if let (Some(min), Some(n)) = (schema["minimum"].as_i64(), value.as_i64()) {
            if n < min {
                return Err(format!("{at} = {n} is below the minimum {min}"));
            }
        }
        if let Some(items) = value.as_array() {
            for (i, item) in items.iter().enumerate() {
                self.validate(item, &schema["items"], &format!("{at}[{i}]"))?;
            }
        }
        if let Some(fields) = value.as_object() {
            let props = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for req in schema["required"].as_array().into_iter().flatten() {
                let req = req.as_str().unwrap_or_default();
                if !fields.contains_key(req) {
                    return Err(format!("{at} lacks the required field {req}"));
                }
            }
            for (k, v) in fields {
                let Some(p) = props.get(k) else {
                    return Err(format!("{at} has the unknown field {k}"));
                };
                self.validate(v, p, &format!("{at}.{k}"))?;
            }
        }
        Ok(())
    }

    /// The success status the operation documents (the lowest 2xx).
    pub fn success(&self, m: &Matched<'_>) -> u16 {
        m.op["responses"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.parse::<u16>().ok())
            .filter(|c| (200..300).contains(c))
            .min()
            .unwrap_or(204)
    }

    /// Whether the operation documents `status` (else its `default`).
    pub fn documents(&self, m: &Matched<'_>, status: u16) -> bool {
        let r = &m.op["responses"];
        !r[status.to_string()].is_null() || !r["default"].is_null()
    }
}

/// The parameters of `path` if it matches `template`.
fn match_path(template: &str, path: &str) -> Option<Vec<(String, String)>> {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    if t.len() != p.len() {
        return None;
    }
    let mut params = Vec::new();
    for (a, b) in t.iter().zip(&p) {
        match a.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            Some(name) if !b.is_empty() => params.push((name.to_string(), b.to_string())),
            Some(_) => return None,
            None if a == b => {}
            None => return None,
        }
    }
    Some(params)
}
