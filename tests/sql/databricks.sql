-- Databricks-style queries, as its ai_query documentation writes them (the
-- endpoint is a serving endpoint name; tests point DATABRICKS_HOST at the
-- simulator). tests/it/sql_semantic.rs runs each one unchanged; queries are
-- separated by lines holding only a semicolon.
SELECT text, ai_query("databricks-meta-llama-3-3-70b-instruct", "Summarize: " || text) AS summary
FROM reviews
;
SELECT `review_id`, ai_query('databricks-meta-llama-3-3-70b-instruct', request => `text`) AS answer
FROM `reviews`
;
SELECT text, ai_query(
    "databricks-meta-llama-3-3-70b-instruct",
    "Classify the sentiment of: " || text,
    modelParameters => named_struct('max_tokens', 50, 'temperature', 0.1)
  ) AS sentiment
FROM reviews
;
SELECT r.result, r.errorMessage
FROM (
  SELECT ai_query("databricks-meta-llama-3-3-70b-instruct", "Summarize: " || text, failOnError => false) AS r
  FROM reviews
)
;
SELECT ai_query(
    "databricks-meta-llama-3-3-70b-instruct",
    "Extract the product and the issue: " || text,
    responseFormat => 'STRUCT<product: STRING, issue: STRING>'
  ) AS extracted
FROM reviews
;
SELECT ai_query(
    "databricks-meta-llama-3-3-70b-instruct",
    "Extract the product and the issue: " || text,
    responseFormat => '{"type": "json_schema", "json_schema": {"name": "review", "schema": {"type": "object", "properties": {"product": {"type": "string"}, "issue": {"type": "string"}}, "required": ["product", "issue"]}, "strict": true}}'
  ) AS extracted
FROM reviews
;
SELECT ai_query("databricks-meta-llama-3-3-70b-instruct", text, returnType => "BOOLEAN") AS flag
FROM reviews WHERE rating <= 2
;
