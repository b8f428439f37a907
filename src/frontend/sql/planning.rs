//! How `aiq sql` bends DataFusion's planning to AI calls and to Spark SQL.
//!
//! - [`AiCallsLast`], an optimizer rule run after DataFusion's own: a
//!   `WHERE` whose conjuncts call a model is split into stacked filters,
//!   the conjuncts without AI calls first, then each AI conjunct in the
//!   order written. DataFusion evaluates an async UDF for every row of the
//!   batch that reaches its filter (before `AND` could short-circuit), so
//!   without the split `WHERE rating <= 2 AND ai_filter(...)` would ask the
//!   model about every row. An inner join whose `ON` calls a model becomes
//!   the join without that condition (a cross product when nothing else is
//!   left) under a filter with it: DataFusion cannot run async UDFs inside
//!   a join, and this makes the pairs asked explicit. Such joins are
//!   recorded ([`JoinNote`]) for `--dry-run`. `ORDER BY ai_score(...)`
//!   gets its key computed in a projection below the sort.
//! - [`SparkFieldAccess`], an expression planner: `r.errorMessage` finds
//!   the struct field `errorMessage` although unquoted names are lowercased,
//!   as Spark resolves field names case-insensitively.

use std::sync::{Arc, Mutex};

use arrow::datatypes::{DataType, Field};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DataFusionError, Result, ScalarValue, TableReference};
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult};
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{Expr, Filter, JoinType, LogicalPlan, Projection, Sort, SortExpr};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The AI functions whose calls must not run inside a join nor before the
/// cheap conjuncts of a filter.
pub fn is_ai_call(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if super::catalog::is_ai_function(f.name()))
}

fn calls_ai(e: &Expr) -> bool {
    e.exists(|n| Ok(is_ai_call(n))).unwrap_or(false)
}

/// The AI calls inside `e`, labelled as the dry run labels them.
fn ai_labels(e: &Expr) -> Vec<String> {
    let mut labels = Vec::new();
    let _ = e.apply(|n| {
        if let Expr::ScalarFunction(f) = n {
            if super::catalog::is_ai_function(f.name()) {
                let literals: Vec<Option<ScalarValue>> = f
                    .args
                    .iter()
                    .map(|a| match a {
                        Expr::Literal(v, _) => Some(v.clone()),
                        _ => None,
                    })
                    .collect();
                labels.push(super::catalog::label(f.name(), &literals));
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    labels
}

/// A join whose `ON` called a model: what `--dry-run` reports about it.
#[derive(Debug, Clone)]
pub struct JoinNote {
    /// The AI calls of its `ON`, labelled.
    pub labels: Vec<String>,
    /// No equality keys were left: every pair of rows is asked.
    pub cross: bool,
    pub left: Arc<LogicalPlan>,
    pub right: Arc<LogicalPlan>,
}

#[derive(Debug, Default)]
pub struct AiCallsLast {
    pub joins: Arc<Mutex<Vec<JoinNote>>>,
}

impl OptimizerRule for AiCallsLast {
    fn name(&self) -> &str {
        "aiq_ai_calls_last"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        plan.transform_up_with_subqueries(|node| self.rewrite_node(node))
    }
}

impl AiCallsLast {
    fn rewrite_node(&self, node: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
        match node {
            LogicalPlan::Filter(filter) if calls_ai(&filter.predicate) => split_filter(filter),
            LogicalPlan::Join(mut join) if join.filter.as_ref().is_some_and(calls_ai) => {
                if join.join_type != JoinType::Inner {
                    return Err(DataFusionError::Plan(format!(
                        "an AI function in the ON of a {} join is not supported: use an inner JOIN, or call it in WHERE",
                        join.join_type
                    )));
                }
                let conjuncts = split_conjunction_owned(
                    join.filter
                        .take()
                        .unwrap_or_else(|| Expr::Literal(ScalarValue::Boolean(Some(true)), None)),
                );
                let (ai, plain): (Vec<Expr>, Vec<Expr>) = conjuncts.into_iter().partition(calls_ai);
                join.filter = conjunction(plain);
                let note = JoinNote {
                    labels: ai.iter().flat_map(ai_labels).collect(),
                    cross: join.on.is_empty() && join.filter.is_none(),
                    left: join.left.clone(),
                    right: join.right.clone(),
                };
                let mut joins = self.joins.lock().unwrap_or_else(|p| p.into_inner());
                if !joins.iter().any(|j| j.labels == note.labels) {
                    joins.push(note);
                }
                drop(joins);
                let mut plan = LogicalPlan::Join(join);
                for predicate in ai {
                    plan = LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(plan))?);
                }
                Ok(Transformed::yes(plan))
            }
            LogicalPlan::Sort(sort) if sort.expr.iter().any(|s| calls_ai(&s.expr)) => {
                // DataFusion runs async UDFs only in projections, filters and
                // aggregates: compute the sort keys in a projection first.
                let columns: Vec<Expr> = sort
                    .input
                    .schema()
                    .columns()
                    .into_iter()
                    .map(Expr::Column)
                    .collect();
                let mut exprs = columns.clone();
                let mut keys = Vec::with_capacity(sort.expr.len());
                for (i, key) in sort.expr.into_iter().enumerate() {
                    if calls_ai(&key.expr) {
                        let name = format!("__aiq_sort_key_{i}");
                        exprs.push(key.expr.clone().alias(&name));
                        keys.push(SortExpr {
                            expr: Expr::Column(Column::from_name(name)),
                            ..key
                        });
                    } else {
                        keys.push(key);
                    }
                }
                let keyed = Projection::try_new(exprs, sort.input)?;
                let sorted = LogicalPlan::Sort(Sort {
                    expr: keys,
                    input: Arc::new(LogicalPlan::Projection(keyed)),
                    fetch: sort.fetch,
                });
                Ok(Transformed::yes(LogicalPlan::Projection(
                    Projection::try_new(columns, Arc::new(sorted))?,
                )))
            }
            other => Ok(Transformed::no(other)),
        }
    }
}

/// `Filter(a AND ai1 AND b AND ai2)` → `Filter(ai2)` over `Filter(ai1)`
/// over `Filter(a AND b)`; unchanged when already in that shape.
fn split_filter(filter: Filter) -> Result<Transformed<LogicalPlan>> {
    let conjuncts = split_conjunction_owned(filter.predicate.clone());
    if conjuncts.len() < 2 {
        return Ok(Transformed::no(LogicalPlan::Filter(filter)));
    }
    let (ai, plain): (Vec<Expr>, Vec<Expr>) = conjuncts.into_iter().partition(calls_ai);
    let mut plan = Arc::unwrap_or_clone(filter.input);
    if let Some(p) = conjunction(plain) {
        plan = LogicalPlan::Filter(Filter::try_new(p, Arc::new(plan))?);
    }
    for predicate in ai {
        plan = LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(plan))?);
    }
    Ok(Transformed::yes(plan))
}

/// Field access by name, resolved the way Spark does it: an exact match
/// first, else the one field whose name matches ignoring case.
#[derive(Debug)]
pub struct SparkFieldAccess;

impl ExprPlanner for SparkFieldAccess {
    fn plan_compound_identifier(
        &self,
        field: &Field,
        qualifier: Option<&TableReference>,
        nested_names: &[String],
    ) -> Result<PlannerResult<Vec<Expr>>> {
        let mut expr = Expr::Column(Column::from((qualifier, field)));
        let mut data_type = field.data_type().clone();
        for name in nested_names {
            let found = match &data_type {
                DataType::Struct(fields) => fields
                    .iter()
                    .find(|f| f.name() == name)
                    .or_else(|| {
                        let mut same = fields
                            .iter()
                            .filter(|f| f.name().eq_ignore_ascii_case(name));
                        match (same.next(), same.next()) {
                            (Some(f), None) => Some(f),
                            _ => None,
                        }
                    })
                    .cloned(),
                _ => None,
            };
            let actual = match found {
                Some(f) => {
                    data_type = f.data_type().clone();
                    f.name().clone()
                }
                None => {
                    // Not a struct we can see into: let get_field say what is wrong.
                    data_type = DataType::Null;
                    name.clone()
                }
            };
            expr = datafusion::functions::core::expr_fn::get_field(expr, actual);
        }
        Ok(PlannerResult::Planned(expr))
    }
}
