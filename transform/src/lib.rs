//! Row expressions: SQL as data scientists write it in Spark, DuckDB and Chronon (`amount * 0.92`,
//! `CASE WHEN status = 'declined' THEN 1 ELSE 0 END`, `hour(ts)`), parsed, type-checked against a
//! source's columns and evaluated over Arrow batches by DataFusion's expression crates — no
//! parser or evaluator of ours.
//!
//! Fathom's semantics on top of DataFusion's, applied once when an expression is compiled:
//! - `/` is floating-point division as in Spark and DuckDB (DataFusion truncates integers), and a
//!   division or modulo by zero is `NULL` (as in DuckDB), never an error;
//! - a result that is not a finite number (an overflow, `sqrt(-1)`) is `NULL`, so no NaN or
//!   infinity reaches a counter;
//! - a row on which an expression fails (a cast that cannot succeed) is reported with its index
//!   and the message; the other rows of the batch are evaluated as usual.

mod rows;
pub use rows::{evaluate_object, holds, json, sql_type, Evaluation, Failure, RowFilter, Transform, SQL_TYPES};

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use datafusion_common::config::ConfigOptions;
use datafusion_common::tree_node::{Transformed, TreeNode};
use datafusion_common::{DFSchema, DataFusionError, TableReference};
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::planner::{ContextProvider, ExprPlanner};
use datafusion_expr::simplify::SimplifyContext;
use datafusion_expr::{
    lit, AggregateUDF, BinaryExpr, Cast, Expr, ExprSchemable, HigherOrderUDF, Operator, ScalarUDF, TableSource,
    WindowUDF,
};
use datafusion_optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion_optimizer::simplify_expressions::ExprSimplifier;
use datafusion_physical_expr::PhysicalExpr;
use datafusion_sql::planner::{PlannerContext, SqlToRel};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::parser::{Parser, ParserError};

/// Why an expression does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    /// What is wrong, as DataFusion's parser or planner says it.
    pub message: String,
    /// How to fix it, when there is a likely fix.
    pub hint: Option<String>,
}

impl ExprError {
    /// One line for a problem report: the message (its line breaks as spaces), then the hint.
    pub fn describe(&self) -> String {
        let message = self.message.replace('\n', " ");
        match &self.hint {
            Some(hint) => format!("{message} (hint: {hint})"),
            None => message,
        }
    }

    /// The same error with another hint, where it has one (planning errors; a syntax error keeps
    /// its own).
    pub fn hinted(mut self, hint: impl FnOnce(&str) -> String) -> ExprError {
        self.hint = self.hint.map(|h| hint(&h));
        self
    }

    /// A planning error (an unknown column, a type mismatch), hinted with the columns there are
    /// and their types.
    fn new(error: DataFusionError, columns: &Schema) -> ExprError {
        let planning = matches!(error.find_root(), DataFusionError::SchemaError(..) | DataFusionError::Plan(..));
        let hint = planning.then(|| {
            let names: Vec<String> =
                columns.fields().iter().map(|f| format!("{} ({})", f.name(), f.data_type())).collect();
            format!("the source's columns: {}", names.join(", "))
        });
        ExprError { message: error.strip_backtrace(), hint }
    }

    /// Not one SQL expression.
    fn syntax(error: ParserError) -> ExprError {
        let hint = "write one SQL expression, e.g. `amount * 0.92` or `CASE WHEN x > 0 THEN 1 ELSE 0 END`";
        ExprError { message: DataFusionError::SQL(Box::new(error), None).strip_backtrace(), hint: Some(hint.into()) }
    }
}

/// The scalar functions expressions may call: DataFusion's defaults, by name and alias.
struct Functions {
    udfs: HashMap<String, Arc<ScalarUDF>>,
    /// DataFusion's planners of SQL forms that are functions underneath (`substr(… FROM …)`,
    /// `extract`, field access, `position`, …).
    planners: Vec<Arc<dyn ExprPlanner>>,
    options: ConfigOptions,
}

impl Functions {
    fn new() -> Functions {
        let mut udfs = HashMap::new();
        for f in datafusion_functions::all_default_functions() {
            for alias in f.aliases() {
                udfs.insert(alias.clone(), f.clone());
            }
            udfs.insert(f.name().to_string(), f);
        }
        let planners: Vec<Arc<dyn ExprPlanner>> = vec![
            Arc::new(datafusion_functions::core::planner::CoreFunctionPlanner::default()),
            Arc::new(datafusion_functions::unicode::planner::UnicodeFunctionPlanner),
            Arc::new(datafusion_functions::datetime::planner::DatetimeFunctionPlanner),
            Arc::new(datafusion_functions_nested::planner::FieldAccessPlanner),
        ];
        Functions { udfs, planners, options: ConfigOptions::default() }
    }
}

impl ContextProvider for Functions {
    fn get_table_source(&self, name: TableReference) -> datafusion_common::Result<Arc<dyn TableSource>> {
        datafusion_common::plan_err!("a row expression reads the event's columns, not tables ({name})")
    }
    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        &self.planners
    }
    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.udfs.get(name).cloned()
    }
    fn get_higher_order_meta(&self, _: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }
    fn get_aggregate_meta(&self, _: &str) -> Option<Arc<AggregateUDF>> {
        None
    }
    fn get_window_meta(&self, _: &str) -> Option<Arc<WindowUDF>> {
        None
    }
    fn get_variable_type(&self, _: &[String]) -> Option<DataType> {
        None
    }
    fn options(&self) -> &ConfigOptions {
        &self.options
    }
    fn udf_names(&self) -> Vec<String> {
        self.udfs.keys().cloned().collect()
    }
    fn higher_order_function_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn udaf_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn udwf_names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A compiled row expression.
#[derive(Debug, Clone)]
pub struct RowExpr {
    sql: String,
    physical: Arc<dyn PhysicalExpr>,
    data_type: DataType,
}

/// One batch's values of an expression, and the rows it failed on.
#[derive(Debug, Clone)]
pub struct Evaluated {
    /// One value per row; `NULL` where the expression failed.
    pub values: ArrayRef,
    /// (row index, message) of each row the expression failed on.
    pub failed: Vec<(usize, String)>,
}

/// `a / b` as floating-point division by `NULLIF(b, 0)`; `a % b` by `NULLIF(b, 0)`.
fn fathom_semantics(expr: Expr) -> datafusion_common::Result<Transformed<Expr>> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return Ok(Transformed::no(expr));
    };
    let nullif = |e: Expr| datafusion_functions::expr_fn::nullif(e, lit(0));
    let float = |e: Box<Expr>| Expr::Cast(Cast::new(e, DataType::Float64));
    let rewritten = match op {
        Operator::Divide => {
            Expr::BinaryExpr(BinaryExpr::new(Box::new(float(left)), Operator::Divide, Box::new(nullif(float(right)))))
        }
        Operator::Modulo => Expr::BinaryExpr(BinaryExpr::new(left, Operator::Modulo, Box::new(nullif(*right)))),
        op => return Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr { left, op, right }))),
    };
    Ok(Transformed::yes(rewritten))
}

impl RowExpr {
    /// Parses and type-checks `sql` against `columns`.
    pub fn compile(sql: &str, columns: &Schema) -> Result<RowExpr, ExprError> {
        let schema = DFSchema::try_from(columns.clone()).map_err(|e| ExprError::new(e, columns))?;
        RowExpr::plan(sql, &schema, columns)
    }

    /// Parses and type-checks a condition: `sql` must be true or false (`example` shows how).
    pub fn compile_condition(sql: &str, columns: &Schema, example: &str) -> Result<RowExpr, ExprError> {
        let expr = RowExpr::compile(sql, columns)?;
        if !matches!(expr.data_type(), DataType::Boolean | DataType::Null) {
            return Err(ExprError {
                message: format!("a condition must be true or false; `{sql}` is {}", expr.data_type()),
                hint: Some(format!("compare it, e.g. {example}")),
            });
        }
        Ok(expr)
    }

    /// Parses and type-checks `sql` against columns qualified by a relation name, read in SQL as
    /// `qualifier.column` (`request.amount`, `card_activity.amount_mean_24h`). A batch it
    /// evaluates has these columns in this order.
    pub fn compile_qualified(sql: &str, columns: &[(String, Field)]) -> Result<RowExpr, ExprError> {
        let named: Vec<Field> =
            columns.iter().map(|(q, f)| Field::new(format!("{q}.{}", f.name()), f.data_type().clone(), true)).collect();
        let named = Schema::new(named);
        let qualified: Vec<(Option<TableReference>, Arc<Field>)> =
            columns.iter().map(|(q, f)| (Some(TableReference::bare(q.as_str())), Arc::new(f.clone()))).collect();
        let schema = DFSchema::new_with_metadata(qualified, HashMap::new()).map_err(|e| ExprError::new(e, &named))?;
        RowExpr::plan(sql, &schema, &named)
    }

    fn plan(sql: &str, schema: &DFSchema, columns: &Schema) -> Result<RowExpr, ExprError> {
        let fail = |e: DataFusionError| ExprError::new(e, columns);
        let ast = Parser::new(&GenericDialect {})
            .try_with_sql(sql)
            .and_then(|mut p| p.parse_expr())
            .map_err(ExprError::syntax)?;
        let functions = Functions::new();
        let expr = SqlToRel::new(&functions).sql_to_expr(ast, schema, &mut PlannerContext::new()).map_err(fail)?;
        let expr = expr.transform_up(fathom_semantics).map_err(fail)?.data;
        let expr = expr.rewrite(&mut TypeCoercionRewriter::new(schema)).map_err(fail)?.data;
        let context = SimplifyContext::builder().with_schema(Arc::new(schema.clone())).build();
        let expr = ExprSimplifier::new(context).simplify(expr).map_err(fail)?;
        let data_type = expr.get_type(schema).map_err(fail)?;
        let physical =
            datafusion_physical_expr::create_physical_expr(&expr, schema, &ExecutionProps::new(), &Default::default())
                .map_err(fail)?;
        Ok(RowExpr { sql: sql.to_string(), physical, data_type })
    }

    /// The positions of the columns it reads, in the schema it was compiled against.
    pub fn column_indices(&self) -> Vec<usize> {
        let mut at: Vec<usize> =
            datafusion_physical_expr::utils::collect_columns(&self.physical).into_iter().map(|c| c.index()).collect();
        at.sort_unstable();
        at.dedup();
        at
    }

    /// The expression as written.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The type of its values.
    pub fn data_type(&self) -> &DataType {
        &self.data_type
    }

    /// Evaluates over `batch` (whose schema is the one it was compiled against). When the batch
    /// fails as a whole, each row is evaluated on its own to find the rows that fail.
    pub fn evaluate(&self, batch: &RecordBatch) -> Evaluated {
        let rows = batch.num_rows();
        match self.physical.evaluate(batch).and_then(|v| v.into_array(rows)) {
            Ok(values) => Evaluated { values: finite(values), failed: Vec::new() },
            Err(_) => self.row_by_row(batch),
        }
    }

    fn row_by_row(&self, batch: &RecordBatch) -> Evaluated {
        let mut parts: Vec<ArrayRef> = Vec::with_capacity(batch.num_rows());
        let mut failed = Vec::new();
        for i in 0..batch.num_rows() {
            let row = batch.slice(i, 1);
            match self.physical.evaluate(&row).and_then(|v| v.into_array(1)) {
                Ok(value) => parts.push(value),
                Err(e) => {
                    failed.push((i, e.strip_backtrace()));
                    parts.push(arrow_array::new_null_array(&self.data_type, 1));
                }
            }
        }
        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        let values = arrow_select::concat::concat(&refs)
            .unwrap_or_else(|_| arrow_array::new_null_array(&self.data_type, batch.num_rows()));
        Evaluated { values: finite(values), failed }
    }
}

/// Non-finite floats (overflow, `sqrt(-1)`) as `NULL`.
fn finite(values: ArrayRef) -> ArrayRef {
    let Some(floats) = values.as_any().downcast_ref::<Float64Array>() else {
        return values;
    };
    if floats.iter().all(|x| x.is_none_or(f64::is_finite)) {
        return values;
    }
    Arc::new(floats.iter().map(|x| x.filter(|x| x.is_finite())).collect::<Float64Array>())
}
