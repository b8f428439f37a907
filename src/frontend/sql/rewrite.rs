//! Rewrite: the parsed query → the form DataFusion can plan, before planning.
//!
//! Two things Databricks SQL users write do not plan as-is in DataFusion 55:
//! - **Named arguments with gaps** (`ai_query('e', x, failOnError => false)`):
//!   DataFusion resolves names to positions but refuses to skip a parameter.
//!   Every AI function call is rewritten here to positional arguments, the
//!   skipped ones filled with `NULL` (which the functions read as "not given").
//! - **Literal arguments that are expressions** (`ARRAY('a', 'b')`,
//!   `named_struct('max_tokens', 100)`): a function's return type may depend
//!   on them (`ai_extract`'s struct fields), but DataFusion shows only plain
//!   literals to `return_field_from_args`. They become one JSON string literal.
//!
//! And file tables: `FROM 'reviews.jsonl'` and `FROM read_parquet('…')`,
//! `read_json('…')`, `read_csv('…')` are replaced by tables registered under
//! generated names, by file extension (DataFusion's URL tables know neither
//! `.jsonl` nor the `read_*` functions).

use std::ops::ControlFlow;
use std::path::PathBuf;

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident, ObjectName,
    ObjectNamePart, TableFactor, UnaryOperator, Value, VisitMut, VisitorMut,
};
use serde_json::Value as Json;

use super::catalog::{parameters, AGG_FUNCTIONS};

/// How a file is read, chosen by its extension or its `read_*` function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Parquet,
    Json,
    Csv,
    /// A Delta Lake table (a folder or prefix with `_delta_log/`), named
    /// as Databricks does: ``delta.`path-or-url` ``.
    Delta,
}

impl FileKind {
    /// By extension: .parquet, .jsonl / .ndjson / .json (one object a line), .csv.
    pub fn of(path: &str) -> Option<FileKind> {
        let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "parquet" => Some(FileKind::Parquet),
            "jsonl" | "ndjson" | "json" => Some(FileKind::Json),
            "csv" => Some(FileKind::Csv),
            _ => None,
        }
    }

    fn of_function(name: &str) -> Option<FileKind> {
        match name {
            "read_parquet" => Some(FileKind::Parquet),
            "read_json" | "read_ndjson" => Some(FileKind::Json),
            "read_csv" => Some(FileKind::Csv),
            _ => None,
        }
    }
}

/// A file the query reads, to register under `name` before planning.
#[derive(Debug, Clone, PartialEq)]
pub struct FileTable {
    pub name: String,
    pub path: PathBuf,
    pub kind: FileKind,
}

/// Rewrites `statement` in place; returns the file tables it now names, or
/// a message for the user when an AI function call is malformed.
pub fn rewrite<S: VisitMut>(statement: &mut S) -> Result<Vec<FileTable>, String> {
    let mut v = Rewriter { tables: Vec::new() };
    match statement.visit(&mut v) {
        ControlFlow::Continue(()) => Ok(v.tables),
        ControlFlow::Break(message) => Err(message),
    }
}

struct Rewriter {
    tables: Vec<FileTable>,
}

impl VisitorMut for Rewriter {
    type Break = String;

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<String> {
        let TableFactor::Table { name, args, .. } = factor else {
            return ControlFlow::Continue(());
        };
        if let Some(path) = delta_path(name).filter(|_| args.is_none()) {
            self.tables.push(FileTable {
                name: format!("__aiq_file_{}", self.tables.len()),
                path: PathBuf::from(path),
                kind: FileKind::Delta,
            });
            let table = self
                .tables
                .last()
                .map(|t| t.name.clone())
                .unwrap_or_default();
            *name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(table))]);
            return ControlFlow::Continue(());
        }
        let Some(ident) = single_ident(name) else {
            return ControlFlow::Continue(());
        };
        let found = match args {
            Some(targs) => {
                let Some(kind) = FileKind::of_function(&ident.value.to_ascii_lowercase()) else {
                    return ControlFlow::Continue(());
                };
                let path = match targs.args.as_slice() {
                    [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))] => string_literal(e),
                    _ => None,
                };
                let Some(path) = path else {
                    return ControlFlow::Break(format!(
                        "{}(...) takes one argument, a file path in quotes",
                        ident.value
                    ));
                };
                (path, kind)
            }
            // `FROM 'reviews.jsonl'`: a quoted name that is an existing file.
            None if ident.quote_style.is_some() => match FileKind::of(&ident.value) {
                Some(kind)
                    if std::path::Path::new(&ident.value).is_file()
                        || crate::job::location::is_url(&ident.value) =>
                {
                    (ident.value.clone(), kind)
                }
                _ => return ControlFlow::Continue(()),
            },
            None => return ControlFlow::Continue(()),
        };
        let table = format!("__aiq_file_{}", self.tables.len());
        self.tables.push(FileTable {
            name: table.clone(),
            path: PathBuf::from(found.0),
            kind: found.1,
        });
        *name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(table))]);
        *args = None;
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<String> {
        let Expr::Function(f) = expr else {
            return ControlFlow::Continue(());
        };
        let Some(ident) = single_ident(&f.name) else {
            return ControlFlow::Continue(());
        };
        let name = ident.value.to_ascii_lowercase();
        let Some(params) = parameters(&name) else {
            return ControlFlow::Continue(());
        };
        let FunctionArguments::List(list) = &mut f.args else {
            return ControlFlow::Break(format!(
                "{name} needs arguments: {name}({})",
                params.join(", ")
            ));
        };
        match positional(&name, params, std::mem::take(&mut list.args)) {
            Ok(mut args) => {
                // An AI aggregate is a scalar function over the group's
                // values (see `agg`): `ai_agg(x, i)` → `ai_agg(array_agg(x), i)`.
                if AGG_FUNCTIONS.contains(&name.as_str()) {
                    if let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(e))) = args.first_mut() {
                        *e = array_agg(std::mem::replace(e, Expr::value(Value::Null)));
                    }
                }
                *list = FunctionArgumentList {
                    duplicate_treatment: None,
                    args,
                    clauses: Vec::new(),
                };
                ControlFlow::Continue(())
            }
            Err(message) => ControlFlow::Break(message),
        }
    }
}

fn array_agg(e: Expr) -> Expr {
    use datafusion::sql::sqlparser::ast::Function;
    Expr::Function(Function {
        name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new("array_agg"))]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(e))],
            clauses: Vec::new(),
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    })
}

/// Arguments in parameter order, names resolved, gaps filled with NULL,
/// literal lists and structs turned into JSON strings.
fn positional(
    function: &str,
    params: &[&str],
    args: Vec<FunctionArg>,
) -> Result<Vec<FunctionArg>, String> {
    let mut slots: Vec<Option<Expr>> = vec![None; params.len()];
    let mut seen_named = false;
    for (i, arg) in args.into_iter().enumerate() {
        let (name, value) = match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => (None, e),
            FunctionArg::Named {
                name,
                arg: FunctionArgExpr::Expr(e),
                ..
            } => (Some(name.value), e),
            FunctionArg::ExprNamed {
                name: Expr::Identifier(name),
                arg: FunctionArgExpr::Expr(e),
                ..
            } => (Some(name.value), e),
            other => return Err(format!("{function}: unsupported argument `{other}`")),
        };
        let index = match name {
            Some(n) => {
                seen_named = true;
                params
                    .iter()
                    .position(|p| p.eq_ignore_ascii_case(&n))
                    .ok_or_else(|| {
                        format!(
                            "{function} has no parameter `{n}`; its parameters are: {}",
                            params.join(", ")
                        )
                    })?
            }
            None if seen_named => {
                return Err(format!(
                    "{function}: positional arguments must come before named ones"
                ))
            }
            None if i >= params.len() => {
                return Err(format!(
                    "{function} takes at most {} arguments: {function}({})",
                    params.len(),
                    params.join(", ")
                ))
            }
            None => i,
        };
        if slots[index].is_some() {
            return Err(format!("{function}: `{}` is given twice", params[index]));
        }
        slots[index] = Some(literal_json(params[index], value)?);
    }
    let given = slots.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
    Ok(slots
        .into_iter()
        .take(given)
        .map(|e| {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(
                e.unwrap_or_else(|| Expr::value(Value::Null)),
            ))
        })
        .collect())
}

/// `labels` given as `ARRAY('a', 'b')` / `ARRAY['a', 'b']` and
/// `modelParameters` given as `named_struct('k', v, ...)` become a JSON
/// string literal; anything else is left for the function to check.
fn literal_json(param: &str, e: Expr) -> Result<Expr, String> {
    let json = match param {
        "labels" => {
            list_literal(&e).map(|items| Json::Array(items.into_iter().map(Json::String).collect()))
        }
        "modelParameters" => struct_literal(&e)?,
        _ => None,
    };
    Ok(match json {
        Some(j) => Expr::value(Value::SingleQuotedString(j.to_string())),
        None => e,
    })
}

fn list_literal(e: &Expr) -> Option<Vec<String>> {
    let items: &[Expr] = match e {
        Expr::Array(a) => &a.elem,
        Expr::Function(f)
            if single_ident(&f.name).is_some_and(|i| {
                matches!(
                    i.value.to_ascii_lowercase().as_str(),
                    "array" | "make_array" | "make_list"
                )
            }) =>
        {
            return match &f.args {
                FunctionArguments::List(l) => l
                    .args
                    .iter()
                    .map(|a| match a {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => string_literal(e),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            }
        }
        _ => return None,
    };
    items.iter().map(string_literal).collect()
}

fn struct_literal(e: &Expr) -> Result<Option<Json>, String> {
    let Expr::Function(f) = e else {
        return Ok(None);
    };
    if !single_ident(&f.name).is_some_and(|i| i.value.eq_ignore_ascii_case("named_struct")) {
        return Ok(None);
    }
    let FunctionArguments::List(l) = &f.args else {
        return Ok(None);
    };
    let values: Vec<&Expr> = l
        .args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect();
    if values.len() != l.args.len() || !values.len().is_multiple_of(2) {
        return Err("modelParameters: named_struct takes pairs of 'name', value".into());
    }
    let mut map = serde_json::Map::new();
    for pair in values.chunks(2) {
        let key = string_literal(pair[0])
            .ok_or("modelParameters: named_struct names must be string literals")?;
        let value = json_literal(pair[1]).ok_or_else(|| {
            format!(
                "modelParameters: the value of `{key}` must be a literal (number, string, boolean)"
            )
        })?;
        map.insert(key, value);
    }
    Ok(Some(Json::Object(map)))
}

fn json_literal(e: &Expr) -> Option<Json> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => {
                Some(Json::String(s.clone()))
            }
            Value::Boolean(b) => Some(Json::Bool(*b)),
            Value::Null => Some(Json::Null),
            n @ Value::Number(..) => serde_json::from_str(&n.to_string()).ok(),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match json_literal(expr)? {
            Json::Number(n) => serde_json::from_str(&format!("-{n}")).ok(),
            _ => None,
        },
        _ => list_literal(e).map(|l| Json::Array(l.into_iter().map(Json::String).collect())),
    }
}

fn string_literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// The path of ``delta.`path` `` (Databricks' way to name a Delta table by
/// its location), if `name` is one.
fn delta_path(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(schema), ObjectNamePart::Identifier(path)]
            if schema.value.eq_ignore_ascii_case("delta") && path.quote_style.is_some() =>
        {
            Some(path.value.clone())
        }
        _ => None,
    }
}

fn single_ident(name: &ObjectName) -> Option<&Ident> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(i)] => Some(i),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn rewritten(sql: &str) -> (String, Vec<FileTable>) {
        let mut stmts = Parser::parse_sql(&GenericDialect {}, sql).unwrap();
        let tables = rewrite(&mut stmts).unwrap();
        (stmts[0].to_string(), tables)
    }

    #[test]
    fn named_arguments_become_positional_with_gaps_filled() {
        let (sql, _) = rewritten("SELECT ai_query('e', text, failOnError => false) FROM t");
        assert_eq!(sql, "SELECT ai_query('e', text, NULL, false) FROM t");
        let (sql, _) = rewritten(
            "SELECT ai_query('e', text, modelParameters => named_struct('max_tokens', 10, 'temperature', -0.5), returnType => 'INT') FROM t",
        );
        assert_eq!(
            sql,
            r#"SELECT ai_query('e', text, 'INT', NULL, '{"max_tokens":10,"temperature":-0.5}') FROM t"#
        );
    }

    #[test]
    fn label_lists_become_json() {
        let (sql, _) = rewritten("SELECT ai_classify(text, ARRAY('good', 'bad')), ai_extract(text, ARRAY['person']) FROM t");
        assert_eq!(
            sql,
            r#"SELECT ai_classify(text, '["good","bad"]'), ai_extract(text, '["person"]') FROM t"#
        );
    }

    #[test]
    fn mistakes_are_named() {
        let mut stmts = Parser::parse_sql(
            &GenericDialect {},
            "SELECT ai_query('e', x, failOnErr => true) FROM t",
        )
        .unwrap();
        assert!(rewrite(&mut stmts)
            .unwrap_err()
            .contains("no parameter `failOnErr`"));
        let mut stmts =
            Parser::parse_sql(&GenericDialect {}, "SELECT ai_gen(a, b) FROM t").unwrap();
        assert!(rewrite(&mut stmts).unwrap_err().contains("at most 1"));
    }

    #[test]
    fn read_functions_become_registered_tables() {
        let (sql, tables) = rewritten("SELECT * FROM read_json('a/b.jsonl') AS r JOIN read_parquet('c.parquet') p ON r.id = p.id");
        assert_eq!(
            sql,
            "SELECT * FROM __aiq_file_0 AS r JOIN __aiq_file_1 p ON r.id = p.id"
        );
        assert_eq!(tables[0].kind, FileKind::Json);
        assert_eq!(tables[1].path, PathBuf::from("c.parquet"));
    }
}
