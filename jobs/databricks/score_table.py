"""Score the new rows of a Unity Catalog table with aiq on Spark and append
them to a results table: the task of the scheduled job in
resources/aiq_nightly.yml (docs/guide/databricks.md says how it is set up).

    score_table.py SOURCE_TABLE RESULTS_TABLE ENDPOINT JOURNAL

SOURCE_TABLE needs the columns `id`, `product` and `text`. A row whose `id`
already has an answer in RESULTS_TABLE is not sent again, so each run
scores what arrived since the last one, and a row that failed is tried
again the next run (its failed attempt stays in RESULTS_TABLE, with its
`error_message`). JOURNAL, a volume folder, keeps every answered call: a
retried or re-run job pays only for the calls not yet answered.
"""

import sys

from pyspark.sql import SparkSession

import aiq.spark


def main(argv):
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    source, results, endpoint, journal = argv[1:]
    spark = SparkSession.builder.appName("aiq-nightly-scores").getOrCreate()
    rows = spark.table(source).select("id", "product", "text")
    if spark.catalog.tableExists(results):
        answered = spark.table(results).filter("error_message IS NULL").select("id")
        rows = rows.join(answered, "id", "left_anti")
    scored = aiq.spark.score(
        rows,
        endpoint=endpoint,
        prompt="Summarize this {{product}} review in one sentence: {{text}}",
        params={"max_tokens": 64, "temperature": 0},
        # The job's whole limit: the tasks running at once share it.
        rpm=2000,
        concurrency=32,
        journal=journal,
    )
    scored.write.mode("append").saveAsTable(results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
