"""Score a table with aiq inside a Spark job: every partition streams
through aiq's Rust core on the executors, with the job's rate limit shared
by the tasks that run at once.

    spark-submit jobs/spark/score_reviews.py INPUT OUTPUT [ENDPOINT]

On Databricks, run it as a notebook or a spark_python_task on a cluster
with the aiq wheel installed; without ENDPOINT it scores against aiq's
built-in simulator, so it runs anywhere PySpark does.
"""

import sys

from pyspark.sql import SparkSession

import aiq.spark


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, target = argv[1], argv[2]
    endpoint = argv[3] if len(argv) > 3 else "simulator"
    spark = SparkSession.builder.appName("aiq-score-reviews").getOrCreate()
    reviews = spark.read.parquet(source) if source.endswith(".parquet") else spark.read.json(source)
    scored = aiq.spark.score(
        reviews,
        endpoint=endpoint,
        prompt="Summarize this {{product}} review in one sentence: {{text}}",
        return_type="STRING",
        params={"max_tokens": 64, "temperature": 0},
        # Job-wide: the tasks running at once share it (see README "Scaling out").
        rpm=2000,
        concurrency=32,
        # Answered calls survive task retries, speculative copies and re-runs.
        journal=target.rstrip("/") + ".calls",
    )
    scored.write.mode("overwrite").parquet(target)
    # Count from what was written: counting `scored` would score it again.
    failed = spark.read.parquet(target).filter("error_message IS NOT NULL").count()
    print(f"scored into {target}; {failed} rows failed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
