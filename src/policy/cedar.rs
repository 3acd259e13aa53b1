//! Embedded Cedar (the `cedar-policy` crate): the policy file and optional schema are parsed and
//! validated once at load, and each confirmed request is one `is_authorized` call over a
//! principal, an action and a resource built for that request alone. Errors are reported with
//! Cedar's own message and the file, line and column it points at.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;

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
            policies,
            authorizer: Authorizer::new(),
            source: cedar.to_path_buf(),
        })
    }

    /// Evaluates one request. Any evaluation error is an error (the gateway fails closed), even
    /// where Cedar alone would skip the erroring policy.
    pub fn authorize(&self, query: Query) -> Result<Verdict, EvalError> {
        let eval = |e: &dyn std::fmt::Display| EvalError(e.to_string());
        let (uid, attrs, parents) = query.principal;
        let mut entities =
            vec![Entity::new(uid.clone(), attrs, parents.clone()).map_err(|e| eval(&e))?];
        // Groups are entities too, so `principal in Group::"sre"` works.
        entities.extend(
            parents
                .into_iter()
                .map(|g| Entity::new_no_attrs(g, HashSet::new())),
        );
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

/// An entity uid of `kind` (one of the fixed, valid type names below) and `id`.
pub fn uid(kind: &str, id: &str) -> EntityUid {
    // The type names are fixed identifiers; an id may be any string.
    let kind = EntityTypeName::from_str(kind).expect("entity type names are fixed identifiers");
    EntityUid::from_type_name_and_id(kind, EntityId::new(id))
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
