"""Writes the malformed-input corpus (tests/corpus/<case>/...) from the literals below.

The files are committed; this script documents exactly which bytes each one holds and
rebuilds them (``python tests/corpus/build_corpus.py``). Each case's description and expected
outcome live in manifest.yaml; tests/test_corpus.py drives them through the CLI.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).parent
HEAD = "user_id,item_id,rating,timestamp\n"
ROWS = "u1,i1,4,978300760\nu1,i2,3,978300800\nu2,i1,5,978301000\nu2,i3,1,978302000\n"
USERS = "user_id,gender,age\nu1,F,25\nu2,M,31\n"
ITEMS = "item_id,genres\ni1,Action|Comedy\ni2,Drama\ni3,Comedy\n"
ML_RATINGS = ("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
              "2::3408::4::978300275\n3::661::2::978297039\n")
ML_MOVIES = ("661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
             "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
             "3408::Erin Brockovich (2000)::Drama\n")
ML_USERS = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::K1A0B\n"
LATEST_RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n2,2,3.5,1445714851\n"


def _parquet(columns: dict, schema: pa.Schema) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns, schema=schema), sink)
    return sink.getvalue().to_pybytes()


LOG_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()),
                        ("rating", pa.float64()), ("timestamp", pa.int64())])
GOOD_LOG = _parquet({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "rating": [4.0, 5.0],
                     "timestamp": [978300760, 978300800]}, LOG_SCHEMA)

# case -> {file name: text (utf-8) or bytes}
CASES: dict[str, dict[str, str | bytes]] = {
    "missing_column": {"interactions.csv": "user_id,item_id,timestamp\nu1,i1,978300760\n"},
    "renamed_column": {"interactions.csv": "userid,item_id,rating,timestamp\n"
                                           "u1,i1,4,978300760\n"},
    "rating_column_wrong_type": {"interactions.csv": HEAD + "u1,i1,good,978300760\n"
                                                            "u2,i2,bad,978300800\n"},
    "timestamp_wrong_unit": {"interactions.csv": HEAD + "u1,i1,4,2001-01-01\n"
                                                        "u2,i2,5,2001-01-02\n"},
    "mixed_type_rating": {"interactions.csv": HEAD + "u1,i1,4,978300760\nu1,i2,3.5,978300800\n"
                                                     "u2,i1,five,978301000\nu2,i3,2,978302000\n"},
    "nan_rating": {"interactions.csv": HEAD + "u1,i1,4,978300760\nu1,i2,NaN,978300800\n"
                                              "u2,i1,5,978301000\nu2,i3,,978302000\n"},
    "infinite_rating": {"interactions.csv": HEAD + "u1,i1,inf,978300760\nu1,i2,3,978300800\n"
                                                   "u2,i1,-inf,978301000\n"},
    "rating_out_of_scale": {"interactions.csv": HEAD + "u1,i1,0,978300760\nu1,i2,6,978300800\n"
                                                       "u2,i1,5,978301000\n"},
    "negative_timestamp": {"interactions.csv": HEAD + "u1,i1,4,978300760\nu1,i2,3,-86400\n"},
    "future_timestamp": {"interactions.csv": HEAD + "u1,i1,4,978300760\nu2,i2,3,4102444800\n"},
    "unparseable_timestamp": {"interactions.csv": HEAD + "u1,i1,4,2001-01-01T00:00:00Z\n"
                                                         "u1,i2,3,2024-13-45\n"
                                                         "u2,i1,5,yesterday\n"},
    "duplicate_rows": {"interactions.csv": HEAD + ROWS + "u1,i1,4,978300760\n"},
    "ids_missing_from_features": {"interactions.csv": HEAD + ROWS + "u9,i1,4,978303000\n"
                                                                    "u1,i9,2,978304000\n",
                                  "users.csv": USERS, "items.csv": ITEMS},
    "empty_file": {"interactions.csv": b""},
    "empty_day_header_only": {"interactions.csv": HEAD},
    "header_only_users": {"interactions.csv": HEAD + ROWS, "users.csv": "user_id,gender,age\n"},
    "missing_users_file": {"interactions.csv": HEAD + ROWS},
    "empty_parquet": {"interactions.parquet": _parquet(
        {"user_id": [], "item_id": [], "rating": [], "timestamp": []}, LOG_SCHEMA)},
    "truncated_parquet": {"interactions.parquet": GOOD_LOG[: len(GOOD_LOG) // 2]},
    "float_ids_parquet": {"interactions.parquet": _parquet(
        {"user_id": [1.0, None], "item_id": ["i1", "i2"], "rating": [4.0, 5.0],
         "timestamp": [978300760, 978300800]},
        LOG_SCHEMA.set(0, pa.field("user_id", pa.float64())))},
    "wrong_delimiter": {"interactions.csv": HEAD.replace(",", ";")
                        + ROWS.replace(",", ";")},
    "wrong_encoding": {"interactions.csv": (HEAD + "u1,i1,4,978300760\nu2,i2,3,978300800\n"
                                            ).encode() + "jos\xe9,i1,5,978301000\n"
                                                         .encode("latin-1")},
    "latin1_declared": {"interactions.csv": (HEAD + "u1,i1,4,978300760\n"
                                             "jos\xe9,i1,5,978301000\n").encode("latin-1")},
    "huge_int_ids_csv": {"interactions.csv": HEAD + "18446744073709551616,9223372036854775808"
                                                    ",4,978300760\n1234567890123456789012345"
                                                    "67890,1,3,978300800\n"},
    "huge_int_ids_parquet": {"interactions.parquet": _parquet(
        {"user_id": [18446744073709551615, 9223372036854775808], "item_id": ["i1", "i2"],
         "rating": [4.0, 5.0], "timestamp": [978300760, 978300800]},
        LOG_SCHEMA.set(0, pa.field("user_id", pa.uint64())))},
    "non_ascii_ids": {"interactions.csv": HEAD + "ユーザー1,映画,4,978300760\nZoë,i2,3,978300800\n"
                                                 "\U0001f642,映画,5,978301000\n",
                      "users.csv": "user_id,gender,age\nユーザー1,F,25\nZoë,M,31\n"
                                   "\U0001f642,F,40\n"},
    "ragged_row": {"interactions.csv": HEAD + "u1,i1,4,978300760\nu1,i2,3,978300800,extra\n"
                                              "u2,i1,5,978301000\n"},
    "short_row_truncated_csv": {"interactions.csv": HEAD + ROWS + "u2,i2"},
    "bom": {"interactions.csv": "\ufeff" + HEAD + ROWS},
    "duplicate_user_ids": {"interactions.csv": HEAD + ROWS,
                           "users.csv": USERS + "u1,M,50\n", "items.csv": ITEMS},
    "quoted_newlines": {"interactions.csv": "user_id,item_id,rating,timestamp,comment\n"
                                            "u1,i1,4,978300760,fine\n"
                                            'u1,i2,3,978300800,"two\nlines"\n'
                                            "u2,i1,9,978301000,too high\n"},
    "duplicate_header": {"interactions.csv": "user_id,item_id,rating,rating,timestamp\n"
                                             "u1,i1,4,5,978300760\n"},
    "blank_id": {"interactions.csv": HEAD + "u1,i1,4,978300760\n   ,i2,3,978300800\n"},
    "ml1m_feature_outside_vocabulary": {
        "ratings.dat": ML_RATINGS, "movies.dat": ML_MOVIES,
        "users.dat": ML_USERS.replace("2::M::", "2::X::")},
    "ml1m_wrong_delimiter": {"ratings.dat": ML_RATINGS.replace("::", ","),
                             "movies.dat": ML_MOVIES, "users.dat": ML_USERS},
    "ml1m_ragged_row": {"ratings.dat": ML_RATINGS.replace("2::1193::4::978298413",
                                                          "2::1193::4::978298413::9"),
                        "movies.dat": ML_MOVIES, "users.dat": ML_USERS},
    "latest_header_only": {"ratings.csv": "userId,movieId,rating,timestamp\n",
                           "movies.csv": "movieId,title,genres\n1,Toy Story (1995),Comedy\n"},
    "latest_wrong_encoding": {"ratings.csv": LATEST_RATINGS,
                              "movies.csv": b"movieId,title,genres\n1,Toy Story (1995),Comedy\n"
                                            b"2,Am\xe9lie (2001),Romance\n"},
}


def build() -> None:
    for case, files in CASES.items():
        folder = HERE / case
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        for name, content in files.items():
            data = content.encode("utf-8") if isinstance(content, str) else content
            (folder / name).write_bytes(data)


if __name__ == "__main__":
    build()
