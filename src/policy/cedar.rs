//! Embedded Cedar (the `cedar-policy` crate): the policy file and optional schema are parsed and
//! validated once at load, and each confirmed request is one `is_authorized` call over a
//! principal, an action and a resource built for that request alone. Errors are reported with
//! Cedar's own message and the file, line and column it points at.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::LazyLock;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use serde_json::Value;

/// Why the policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Cedar refused the policies or the schema; the message names the file, line and column.
    #[error("{0}")]
    Cedar(String),
}

/// The loaded policies.
#[derive(Debug)]
pub struct Engine {
    policies: PolicySet,
    authorizer: Authorizer,
    reads: Reads,
    /// The file, for messages.
    pub source: PathBuf,
}

/// The decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether Cedar allowed it.
    pub allowed: bool,
    /// The determining policies (`@id` annotation, else Cedar's `policyN`).
    pub policies: Vec<String>,
}

/// Cedar could not evaluate a request: the gateway fails closed.
#[derive(Debug, thiserror::Error)]
#[error("policy evaluation failed: {0}")]
pub struct EvalError(pub String);

/// A request as Cedar sees it.
pub struct Query {
    /// `User::"sub"` (or `Session::"hash"` when the session names no subject) with its attributes.
    pub principal: (
        EntityUid,
        HashMap<String, RestrictedExpression>,
        HashSet<EntityUid>,
    ),
    /// `Action::"route-name"`.
    pub action: EntityUid,
    /// `Target::"/path"` with its attributes.
    pub resource: (EntityUid, HashMap<String, RestrictedExpression>),
    /// The context record.
    pub context: Vec<(String, RestrictedExpression)>,
}

impl Engine {
    /// Reads, parses and validates the policies (against `schema` when given). `actions` are the
    /// route names the policies are evaluated for: with a schema, each must be a declared action.
    pub fn load(
        cedar: &Path,
        schema: Option<&Path>,
        actions: &[&str],
    ) -> Result<Engine, PolicyError> {
        let text = read(cedar)?;
        let parsed = PolicySet::from_str(&text)
            .map_err(|e| PolicyError::Cedar(located(cedar, &text, &e)))?;
        if let Some(template) = parsed.templates().next() {
            return Err(PolicyError::Cedar(format!(
                "{}: template {} has slots (?principal, ?resource); only static policies are \
                 evaluated, so it would never apply",
                cedar.display(),
                template.id()
            )));
        }
        // Name each policy by its `@id` annotation, so audit records carry the names SREs chose.
        let mut policies = PolicySet::new();
        for policy in parsed.policies() {
            let policy = match policy.annotation("id") {
                Some(id) => policy.new_id(PolicyId::new(id)),
                None => policy.clone(),
            };
            let id = policy.id().to_string();
            policies.add(policy).map_err(|e| {
                PolicyError::Cedar(format!("{}: policy {id:?}: {e}", cedar.display()))
            })?;
        }
        if let Some(schema_path) = schema {
            let schema_text = read(schema_path)?;
            let (schema, _warnings) = Schema::from_cedarschema_str(&schema_text)
                .map_err(|e| PolicyError::Cedar(located(schema_path, &schema_text, &e)))?;
            let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
            if let Some(error) = result.validation_errors().next() {
                return Err(PolicyError::Cedar(located(cedar, &text, error)));
            }
            let declared: HashSet<String> = schema
                .actions()
                .map(|a| a.id().unescaped().to_string())
                .collect();
            if let Some(missing) = actions.iter().find(|a| !declared.contains(**a)) {
                return Err(PolicyError::Cedar(format!(
                    "{}: route {missing:?} is high-impact but the schema declares no action \
                     {missing:?}; add `action \"{missing}\" appliesTo {{ ... }};`",
                    schema_path.display()
                )));
            }
        }
        Ok(Engine {
            reads: Reads::of(&policies),
            policies,
            authorizer: Authorizer::new(),
            source: cedar.to_path_buf(),
        })
    }

    /// The attributes the loaded policies can read.
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    /// Evaluates one request. Any evaluation error is an error (the gateway fails closed), even
    /// where Cedar alone would skip the erroring policy.
    pub fn authorize(&self, query: Query) -> Result<Verdict, EvalError> {
        let eval = |e: &dyn std::fmt::Display| EvalError(e.to_string());
        let (uid, attrs, parents) = query.principal;
        // The groups are the principal's parents, so `principal in Group::"sre"` works. They
        // are not entities of their own: Cedar answers `in` from the principal's ancestors, a
        // group has no attributes to read, and each entity costs its share of the transitive
        // closure Cedar computes per request.
        let mut entities = vec![Entity::new(uid.clone(), attrs, parents).map_err(|e| eval(&e))?];
        let (resource, resource_attrs) = query.resource;
        entities.push(
            Entity::new(resource.clone(), resource_attrs, HashSet::new()).map_err(|e| eval(&e))?,
        );
        let entities = Entities::from_entities(entities, None).map_err(|e| eval(&e))?;
        let context = Context::from_pairs(query.context).map_err(|e| eval(&e))?;
        let request =
            Request::new(uid, query.action, resource, context, None).map_err(|e| eval(&e))?;
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, &entities);
        if let Some(error) = response.diagnostics().errors().next() {
            return Err(eval(error));
        }
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        policies.sort();
        Ok(Verdict {
            allowed: response.decision() == Decision::Allow,
            policies,
        })
    }
}

/// The entity types the gateway builds.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// `User::"<sub>"`.
    User,
    /// `Group::"<name>"`.
    Group,
    /// `Session::"<hash>"`, a session that names no subject.
    Session,
    /// `Target::"<path>"`.
    Target,
    /// `Action::"<route>"`.
    Action,
}

/// Each type name parsed once: Cedar's parser costs microseconds per call.
static TYPE_NAMES: LazyLock<[EntityTypeName; 5]> = LazyLock::new(|| {
    ["User", "Group", "Session", "Target", "Action"]
        .map(|name| EntityTypeName::from_str(name).expect("entity type names are identifiers"))
});

/// An entity uid of `kind` and `id` (any string).
pub fn uid(kind: Kind, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(TYPE_NAMES[kind as usize].clone(), EntityId::new(id))
}

/// Which attributes the loaded policies can read, found once at load, so a request builds only
/// those: building the claims record or the `ipaddr` value no policy reads is most of an
/// evaluation's cost.
///
/// Exact, because Cedar has no computed attribute names: an attribute is read only by `.name`,
/// `["name"]` or `has name` with its name written in the policy. An entity's attributes are read
/// only that way; the context record can also be used whole (`context == {...}`), so its keys are
/// narrowed only when every use of `context` reads one key.
#[derive(Debug, Clone)]
pub struct Reads {
    /// Every attribute name read anywhere, on any entity or record; `None`: unknown, all of them.
    attrs: Option<HashSet<String>>,
    /// The context keys read; `None` when `context` is used whole (or unknown).
    context: Option<HashSet<String>>,
}

impl Reads {
    fn of(policies: &PolicySet) -> Reads {
        let mut reads = Reads {
            attrs: Some(HashSet::new()),
            context: Some(HashSet::new()),
        };
        for policy in policies.policies() {
            match policy.to_json() {
                Ok(json) => reads.walk(&json),
                // Not analysable: build everything.
                Err(_) => {
                    return Reads {
                        attrs: None,
                        context: None,
                    }
                }
            }
        }
        reads
    }

    /// Whether an entity attribute `name` may be read.
    pub fn attr(&self, name: &str) -> bool {
        self.attrs.as_ref().is_none_or(|names| names.contains(name))
    }

    /// Whether the context key `name` may be read.
    pub fn context(&self, name: &str) -> bool {
        self.context.as_ref().is_none_or(|keys| keys.contains(name))
    }

    /// Collects attribute reads from a policy's JSON form (Cedar's EST): `{".": {left, attr}}`,
    /// `{"has": {left, attr}}` (`attr` a name or, for `has a.b`, a list) and `{"Var": "context"}`.
    fn walk(&mut self, node: &Value) {
        match node {
            Value::Object(map) => {
                for (key, value) in map {
                    if key == "." || key == "has" {
                        if let (Some(left), Some(attr)) = (value.get("left"), value.get("attr")) {
                            let names: Vec<&str> = match attr {
                                Value::String(name) => vec![name.as_str()],
                                Value::Array(list) => {
                                    list.iter().filter_map(Value::as_str).collect()
                                }
                                _ => Vec::new(),
                            };
                            if let Some(attrs) = &mut self.attrs {
                                attrs.extend(names.iter().map(|n| n.to_string()));
                            }
                            if left.get("Var").and_then(Value::as_str) == Some("context") {
                                if let (Some(keys), Some(first)) =
                                    (&mut self.context, names.first())
                                {
                                    keys.insert(first.to_string());
                                }
                                continue;
                            }
                        }
                    }
                    if key == "Var" && value.as_str() == Some("context") {
                        self.context = None;
                    }
                    self.walk(value);
                }
            }
            Value::Array(items) => items.iter().for_each(|item| self.walk(item)),
            _ => {}
        }
    }
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `file:line:column: message` for a Cedar diagnostic, at its first labelled span.
fn located(file: &Path, text: &str, error: &dyn Diagnostic) -> String {
    let mut message = error.to_string();
    if let Some(help) = error.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    let offset = error
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset())
        .or_else(|| {
            error
                .related()
                .and_then(|mut related| related.next())
                .and_then(|r| r.labels().and_then(|mut l| l.next()).map(|l| l.offset()))
        });
    match offset {
        Some(offset) => {
            let before = text.get(..offset).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{}:{line}:{column}: {message}", file.display())
        }
        None => format!("{}: {message}", file.display()),
    }
}
