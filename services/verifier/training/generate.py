"""Generated hard negatives and positives that QQP lacks.

QQP teaches "these two Quora questions ask the same thing", but it almost never contains the
pairs a cache meets from developers and agents: one word flipped to its antonym, another
language or OS named, a number changed, the scope narrowed; nor the terse, chatty or
"?"-less command forms of the same coding question. A QQP-only cross-encoder therefore scores
"enable/disable" pairs above 0.9 and rejects plain rewordings of coding questions.

Everything here is templates and vocabulary in code, rendered with one seeded
``random.Random``: the same seed gives the same pairs, in the same order. None of it is
copied from an evaluation set (QQP validation, fow-cache); the test suite checks that the
seed examples it asserts on are never produced verbatim.

A *task* is a set of paraphrase templates over named *slots*. Each slot has mutually
exclusive values (an antonym pair, a set of languages, numbers, ...), and every value may have
several surface forms (aliases) that mean the same thing ("JavaScript", "JS").

- positive: the same slot values rendered through two different templates / frames / aliases;
- negative: one slot changed to another value (or two slots swapped, or the frame negated),
  usually rendered minimally (same template and frame), sometimes also reworded, so that the
  model must read the meaning instead of counting differing words.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# ------------------------------------------------------------------ vocabulary
# Each value is a tuple of aliases: the first is canonical, the others mean the same.
V = tuple[str, ...]

LANGS: list[V] = [
    ("Python", "python", "Python 3", "py"),
    ("JavaScript", "JS", "javascript", "JS (vanilla)"),
    ("TypeScript", "TS", "typescript"),
    ("Rust", "rust"),
    ("Go", "Golang", "golang"),
    ("Java", "java"),
    ("C++", "cpp", "c++"),
    ("C#", "C Sharp", "csharp"),
    ("Ruby", "ruby"),
    ("PHP", "php"),
    ("Kotlin", "kotlin"),
    ("Swift", "swift"),
    ("Bash", "bash", "shell"),
    ("R", "the R language"),
    ("Scala", "scala"),
    ("Elixir", "elixir"),
]
WEB_FRAMEWORKS: list[V] = [
    ("React", "ReactJS", "react"),
    ("Vue", "Vue.js", "vue"),
    ("Angular", "angular"),
    ("Svelte", "svelte"),
    ("jQuery", "jquery"),
]
PY_FRAMEWORKS: list[V] = [("Django", "django"), ("Flask", "flask"), ("FastAPI", "fastapi")]
DATAFRAME_LIBS: list[V] = [("pandas", "Pandas"), ("polars", "Polars"), ("PySpark", "Spark")]
ML_LIBS: list[V] = [("PyTorch", "torch", "pytorch"), ("TensorFlow", "TF", "tensorflow"), ("JAX", "jax")]
DATABASES: list[V] = [
    ("PostgreSQL", "Postgres", "postgres"),
    ("MySQL", "mysql"),
    ("SQLite", "sqlite"),
    ("SQL Server", "MSSQL"),
    ("Oracle", "Oracle DB"),
]
NOSQL: list[V] = [("MongoDB", "Mongo"), ("Redis", "redis"), ("Cassandra",), ("DynamoDB",)]
OSES: list[V] = [
    ("Windows", "Windows 11", "Win"),
    ("macOS", "Mac", "OS X"),
    ("Ubuntu", "ubuntu"),
    ("Linux",),
    ("Fedora",),
    ("Android",),
    ("iOS", "iPhone"),
]
PKG_MANAGERS: list[V] = [("npm",), ("yarn",), ("pnpm",), ("pip",), ("conda",), ("poetry",)]
CLOUDS: list[V] = [("AWS", "Amazon Web Services"), ("GCP", "Google Cloud"), ("Azure", "Microsoft Azure")]
EDITORS: list[V] = [("VS Code", "VSCode", "Visual Studio Code"), ("Vim", "vim"), ("Emacs",), ("PyCharm",), ("IntelliJ",)]
BROWSERS: list[V] = [("Chrome", "Google Chrome"), ("Firefox", "Mozilla Firefox"), ("Safari",), ("Edge",)]
VERSIONED: list[tuple[str, list[str]]] = [
    ("Python", ["2", "2.7", "3.6", "3.8", "3.10", "3.12"]),
    ("Node", ["12", "14", "16", "18", "20", "22"]),
    ("Java", ["8", "11", "17", "21"]),
    ("React", ["16", "17", "18", "19"]),
    ("Angular", ["1", "2", "14", "17"]),
    ("PHP", ["5", "7", "8"]),
    ("Django", ["1.11", "2.2", "3.2", "4.2", "5.0"]),
    ("Ubuntu", ["18.04", "20.04", "22.04", "24.04"]),
    ("Vue", ["2", "3"]),
]
CITIES: list[V] = [
    ("Paris",), ("London",), ("Tokyo",), ("New York", "NYC"), ("Berlin",), ("Madrid",), ("Rome",),
    ("Sydney",), ("Toronto",), ("Chicago",), ("Seoul",), ("Mumbai",), ("Cairo",), ("Lisbon",),
]
COUNTRIES: list[V] = [
    ("France",), ("Germany",), ("Japan",), ("Canada",), ("Brazil",), ("India",), ("Spain",),
    ("Italy",), ("Mexico",), ("Australia",), ("the US", "the USA", "the United States"), ("the UK", "Britain"),
]
SPOKEN: list[V] = [("Spanish",), ("French",), ("German",), ("Japanese",), ("Italian",), ("Portuguese",), ("Chinese", "Mandarin")]
WEEKDAYS: list[V] = [("Monday",), ("Tuesday",), ("Wednesday",), ("Thursday",), ("Friday",), ("Saturday",), ("Sunday",)]
MONTHS: list[V] = [(m,) for m in ("January", "February", "March", "April", "May", "June", "July",
                                   "August", "September", "October", "November", "December")]
YEARS: list[V] = [(str(y),) for y in range(2015, 2027)]
SMALL_NUMBERS: list[V] = [("2", "two"), ("3", "three"), ("4", "four"), ("5", "five"), ("6", "six"),
                          ("7", "seven"), ("8", "eight"), ("10", "ten"), ("12", "twelve"), ("20", "twenty")]
BIG_NUMBERS: list[V] = [(str(n),) for n in (25, 50, 100, 150, 200, 250, 500, 1000, 5000)]
CURRENCIES: list[V] = [("USD", "US dollars", "dollars"), ("EUR", "euros"), ("GBP", "pounds"), ("JPY", "yen"), ("INR", "rupees")]
LENGTH_UNITS: list[V] = [("km", "kilometers"), ("miles", "mi"), ("meters", "m"), ("feet", "ft"), ("inches", "in")]
WEIGHT_UNITS: list[V] = [("kg", "kilograms"), ("pounds", "lbs"), ("grams", "g"), ("ounces", "oz")]
TEMP_UNITS: list[V] = [("Celsius", "°C"), ("Fahrenheit", "°F"), ("Kelvin",)]
DATA_UNITS: list[V] = [("KB", "kilobytes"), ("MB", "megabytes"), ("GB", "gigabytes"), ("TB", "terabytes")]
TIME_UNITS: list[V] = [("seconds",), ("minutes",), ("hours",), ("days",), ("weeks",)]
STREAMING: list[V] = [("Netflix",), ("Spotify",), ("Disney+",), ("Hulu",), ("YouTube Premium",)]
ACCOUNTS: list[V] = [("Gmail", "Google account"), ("Facebook",), ("Instagram",), ("LinkedIn",), ("Twitter", "X"),
                     ("GitHub",), ("Slack",), ("Discord",), ("Zoom",)]
FOODS: list[V] = [("rice",), ("chicken breast",), ("an egg", "one egg"), ("a banana",), ("salmon",), ("tofu",), ("oatmeal",)]


def ab(*pairs: str) -> list[V]:
    """Antonym values: 'enable|turn on' -> ('enable', 'turn on')."""
    return [tuple(p.split("|")) for p in pairs]


# ------------------------------------------------------------------ tasks
@dataclass(frozen=True)
class Task:
    """Paraphrase templates over slots. ``frames`` says which frames fit: 'lang' (a coding
    action; a language from LANGS goes in the frame), 'none' (an action without a language),
    'question' (the template already is a question)."""

    templates: tuple[str, ...]
    slots: dict[str, list[V]]
    frames: str = "none"
    swap: tuple[str, str] | None = None  # two slots whose values may be exchanged (A to B vs B to A)
    nouns: tuple[str, ...] = ()  # terse noun phrases over the same slots ("binary search")
    category: str = "antonym"


T = Task
TASKS: list[Task] = [
    # --- antonyms and opposite directions (coding)
    T(("sort {coll} in {dir} order", "order {coll} {dir}", "sort {coll} {dir}", "arrange {coll} in {dir} order"),
      {"coll": ab("a list", "an array|an array of numbers", "a dictionary by value|a dict by its values"),
       "dir": ab("ascending|increasing", "descending|decreasing|reverse")}, frames="lang"),
    T(("{act} an element {coll}", "{act} an item {coll}"),
      {"act": [("add", "insert", "append"), ("remove", "delete")],
       "coll": ab("to a list|into a list", "to an array|into an array", "to a set|into a set")}, frames="lang"),
    T(("{act} an element from {coll}", "{act} an item from {coll}"),
      {"act": ab("remove|delete", "pop|take out"), "coll": ab("a list", "an array", "a set", "a map|a hashmap")},
      frames="lang"),
    T(("convert {from_} to {to}", "turn {from_} into {to}", "cast {from_} to {to}", "parse {from_} into {to}"),
      {"from_": ab("a string|a str", "an integer|an int", "a float", "a list|an array", "a dictionary|a dict|a map",
                   "bytes|a byte array", "JSON|a JSON string"),
       "to": ab("an integer|an int|a number", "a string|a str", "a float|a decimal", "a list|an array",
                "a dictionary|a dict|a map", "bytes", "JSON")}, frames="lang", swap=("from_", "to"),
      nouns=("{from_} to {to}", "{from_} to {to} conversion"), category="swap"),
    T(("{op} a string to {case}", "make a string {case}", "change a string to {case}"),
      {"op": [("convert", "turn")], "case": ab("uppercase|upper case|all caps", "lowercase|lower case",
                                                "title case", "snake_case|snake case", "camelCase|camel case")},
      frames="lang", category="entity"),
    T(("{dir} a string", "{dir} the contents of a string"),
      {"dir": ab("encode|base64-encode", "decode|base64-decode")}, frames="lang"),
    T(("{op} a file", "{op} a file on disk"),
      {"op": ab("encrypt", "decrypt")}, frames="lang"),
    T(("{op} a folder", "{op} a directory", "{op} a directory recursively"),
      {"op": ab("zip|compress", "unzip|decompress|extract")}, frames="lang"),
    T(("{op} a JSON object", "{op} an object to and from JSON|{op} JSON data"),
      {"op": ab("serialize", "deserialize")}, frames="lang"),
    T(("find the {ext} value in {coll}", "get the {ext} of {coll}", "compute the {ext} element of {coll}"),
      {"ext": ab("maximum|max|largest", "minimum|min|smallest"), "coll": ab("a list", "an array", "a dictionary")},
      frames="lang"),
    T(("get the {pos} element of {coll}", "access the {pos} item in {coll}", "retrieve the {pos} element of {coll}"),
      {"pos": ab("first", "last", "second"), "coll": ab("a list", "an array", "a tuple")}, frames="lang"),
    T(("{op} whitespace at the {side} of a string", "trim {side} whitespace from a string"),
      {"op": [("remove", "strip")], "side": ab("start|beginning", "end")}, frames="lang"),
    T(("check if a string {cond} a substring", "test whether a string {cond} a substring"),
      {"cond": ab("starts with", "ends with", "contains")}, frames="lang", category="scope"),
    T(("{op} a {obj} from a file", "{op} {obj} to a file"),
      {"op": ab("read", "write"), "obj": ab("text|string", "CSV", "JSON")}, frames="lang"),
    T(("make a {kind} HTTP request", "send a {kind} HTTP request", "do a {kind} API call"),
      {"kind": ab("GET", "POST", "PUT", "DELETE")}, frames="lang", category="entity"),
    T(("run code {mode}", "call a function {mode}", "execute a function {mode}"),
      {"mode": ab("synchronously|in a blocking way", "asynchronously|async|non-blocking", "in parallel|concurrently")},
      frames="lang"),
    T(("make a {depth} copy of {coll}", "{depth} copy {coll}", "create a {depth} copy of {coll}"),
      {"depth": ab("deep", "shallow"), "coll": ab("a list", "an object", "a dictionary|a dict")}, frames="lang"),
    T(("round a number {dir}", "round a float {dir}", "round {dir} to the nearest integer"),
      {"dir": ab("up|upward", "down|downward")}, frames="lang"),
    T(("get the {which} path of a file", "resolve the {which} path of a file"),
      {"which": ab("absolute|full", "relative")}, frames="lang"),
    T(("{kind} a class method", "declare a {kind} method|declare a method as {kind}"),
      {"kind": ab("public", "private", "static")}, frames="lang"),
    T(("{op} a list of strings {sep}", "{op} strings {sep}"),
      {"op": ab("join", "split"), "sep": ab("with a comma|by commas", "with a newline|by newlines", "with spaces|by spaces")},
      frames="lang"),
    T(("{op} a thread", "{op} a background thread", "{op} a worker thread"),
      {"op": ab("start|launch", "stop|kill|terminate", "pause")}, frames="lang"),
    T(("{op} a mutex", "{op} a lock"),
      {"op": ab("lock|acquire", "unlock|release")}, frames="lang"),
    T(("{op} a database connection", "{op} a connection to the database"),
      {"op": ab("open", "close")}, frames="lang"),
    T(("{op} the {n} {end} of a list", "get the {end} {n} items of a list|take the {end} {n} elements of a list"),
      {"op": [("get", "take")], "end": ab("first", "last"), "n": SMALL_NUMBERS}, frames="lang", category="number"),
    T(("read the {pos} {n} lines of a file", "print the {pos} {n} lines of a file"),
      {"pos": ab("first", "last"), "n": SMALL_NUMBERS}, frames="lang", category="number"),
    T(("generate a random number between {lo} and {hi}", "pick a random integer from {lo} to {hi}"),
      {"lo": [("0", "zero"), ("1", "one"), ("5",)], "hi": [("10", "ten"), ("100",), ("6", "six"), ("1000",)]},
      frames="lang", category="number"),
    T(("round a number to {n} decimal places", "format a float with {n} decimals", "round to {n} digits after the decimal point"),
      {"n": SMALL_NUMBERS[:5]}, frames="lang", category="number"),
    T(("wait {n} {unit}", "sleep for {n} {unit}", "pause execution for {n} {unit}"),
      {"n": SMALL_NUMBERS, "unit": ab("seconds", "milliseconds|ms", "minutes")}, frames="lang", category="number"),
    T(("implement {algo}", "write {algo}", "code {algo}"),
      {"algo": ab("merge sort|mergesort", "bubble sort", "binary search", "insertion sort", "heap sort|heapsort",
                  "a linked list", "a binary tree", "a stack", "a queue", "depth-first search|DFS",
                  "breadth-first search|BFS", "Dijkstra's algorithm|Dijkstra")},
      frames="lang", nouns=("{algo}", "{algo} implementation", "{algo} example"), category="entity"),
    T(("reverse {obj}", "invert the order of {obj}"),
      {"obj": ab("a string|a str", "a list", "an array", "a linked list", "the words in a sentence")},
      frames="lang", nouns=("reverse {obj}",), category="scope"),
    T(("remove duplicates from {obj}", "deduplicate {obj}", "get rid of duplicate entries in {obj}"),
      {"obj": ab("a list", "a list of dictionaries|a list of dicts", "a string", "an array of objects")},
      frames="lang", category="scope"),
    T(("count the {what} in a string", "get the number of {what} in a string"),
      {"what": ab("words", "characters|chars", "vowels", "lines")}, frames="lang", category="scope"),
    T(("iterate over {obj}", "loop through {obj}", "loop over {obj}"),
      {"obj": ab("a dictionary|a dict", "a list with its index|a list with indices", "two lists at once|two lists in parallel",
                 "the lines of a file", "the characters of a string")}, frames="lang", category="scope"),
    T(("handle {err}", "catch {err}", "deal with {err}"),
      {"err": ab("a timeout error|timeouts", "a null pointer exception|null references", "a division by zero",
                 "a file not found error|missing files", "an out of memory error|OOM errors")},
      frames="lang", category="entity"),
    # --- library / framework / version swaps
    T(("use state in {fw}", "manage component state in {fw}", "handle local state with {fw}"),
      {"fw": WEB_FRAMEWORKS}, category="entity"),
    T(("pass data from a parent to a child component in {fw}", "send props to a child component in {fw}",
       "share data between parent and child components in {fw}"),
      {"fw": WEB_FRAMEWORKS[:4]}, category="entity"),
    T(("add a REST endpoint in {fw}", "create an API route with {fw}", "define a new API endpoint in {fw}"),
      {"fw": PY_FRAMEWORKS}, category="entity"),
    T(("{op} rows in a {lib} DataFrame", "{op} DataFrame rows with {lib}"),
      {"op": ab("filter|select", "drop|delete", "sort|order", "group|aggregate"), "lib": DATAFRAME_LIBS}),
    T(("move a tensor to the GPU in {lib}", "run a model on CUDA with {lib}", "use the GPU for training in {lib}"),
      {"lib": ML_LIBS}, category="entity"),
    T(("{op} the weights of a model in {lib}", "{op} a model checkpoint with {lib}"),
      {"op": ab("save|store", "load|restore"), "lib": ML_LIBS}),
    T(("{op} an index on a table in {db}", "{op} a table index in {db}"),
      {"op": ab("create|add", "drop|remove"), "db": DATABASES}),
    T(("{op} a column in a table in {db}", "{op} a column in an existing {db} table"),
      {"op": ab("add", "drop|remove", "rename"), "db": DATABASES}),
    T(("do an {join} join in {db}", "write an {join} join query in {db}"),
      {"join": ab("inner", "outer", "left outer|left"), "db": DATABASES}),
    T(("{op} a key in {db}", "{op} a record in {db}"),
      {"op": ab("set|insert", "delete|remove", "update"), "db": NOSQL}),
    T(("install {pkg} on {os}", "set up {pkg} on {os}", "get {pkg} running on {os}"),
      {"pkg": ab("Docker", "Node.js|Node", "Python", "Git", "PostgreSQL|Postgres", "Java|the JDK"), "os": OSES[:5]},
      category="entity"),
    T(("{op} {pkg} {os}", "{op} {pkg} completely {os}"),
      {"op": ab("install", "uninstall|remove"), "pkg": ab("Docker", "Python", "Node.js"),
       "os": ab("on Windows|on Win", "on macOS|on a Mac", "on Ubuntu")}),
    T(("{op} a package with {pm}", "{op} a dependency using {pm}"),
      {"op": ab("install|add", "uninstall|remove", "update|upgrade"), "pm": PKG_MANAGERS}),
    T(("upgrade from {name} {v1} to {v2}", "migrate my code from {name} {v1} to {v2}"),
      {"name": [("Python",)], "v1": [("2",), ("3.8",)], "v2": [("3",), ("3.12",)]}, swap=("v1", "v2"),
      category="number"),
    T(("{what} in {name} {ver}", "{what} with {name} {ver}", "{what} using {name} version {ver}"),
      {"what": ab("print without a newline", "read user input", "format strings", "use type hints",
                  "define an async function", "use pattern matching"),
       "name": [("Python",)], "ver": [("2",), ("2.7",), ("3",), ("3.10",), ("3.12",)]}, category="number"),
    T(("what's new in {name} {ver}", "what changed in {name} {ver}", "main features of {name} {ver}"),
      {"name": [("Python",)], "ver": [(v,) for v in ("3.9", "3.10", "3.11", "3.12", "3.13")]}, category="number", frames="question"),
    T(("upgrade {name} to version {ver}", "update to {name} {ver}"),
      {"name": [("Node",), ("Node.js",)], "ver": [(v,) for v in ("16", "18", "20", "22")]}, category="number"),
    T(("set up {name} {ver} with {pm}", "install {name} {ver} using {pm}"),
      {"name": [("Java",)], "ver": [("8",), ("11",), ("17",), ("21",)], "pm": [("Homebrew", "brew"), ("apt",), ("sdkman",)]},
      category="number"),
    T(("{op} a {cloud} virtual machine", "{op} a VM on {cloud}", "{op} an instance in {cloud}"),
      {"op": ab("start|launch", "stop|shut down", "delete|terminate"), "cloud": CLOUDS}),
    T(("{op} an extension in {ed}", "{op} a plugin for {ed}"),
      {"op": ab("install", "disable|turn off", "enable|turn on", "uninstall|remove"), "ed": EDITORS}),
    T(("{op} {what} in {ed}", "{op} the {what} setting in {ed}"),
      {"op": ab("enable|turn on", "disable|turn off"), "what": ab("word wrap", "line numbers", "auto save|autosave", "format on save"),
       "ed": EDITORS[:3]}),
    T(("clear the {what} in {br}", "delete the {what} in {br}", "wipe {what} from {br}"),
      {"what": ab("cache", "cookies", "history"), "br": BROWSERS}),
    T(("{op} pop-ups in {br}", "{op} popups on {br}"),
      {"op": ab("block|stop", "allow|enable"), "br": BROWSERS}),
    # --- git / shell (no language slot)
    T(("undo the last commit and {mode} the changes", "revert my last commit but {mode} the changes",
       "roll back the last commit and {mode} my changes"),
      {"mode": ab("keep", "discard|throw away|lose")}),
    T(("{op} a {where} branch in git", "{op} a {where} git branch", "git {op} {where} branch"),
      {"op": ab("delete|remove", "create|make", "rename"), "where": ab("local", "remote")}),
    T(("{op} the remote", "git {op} origin"),
      {"op": ab("push changes to|send my commits to", "pull changes from|fetch changes from")}),
    T(("undo the last {n} commits in git", "revert the last {n} git commits", "roll back {n} commits"),
      {"n": SMALL_NUMBERS[:6]}, category="number"),
    T(("squash the last {n} commits", "combine my last {n} commits into one"),
      {"n": SMALL_NUMBERS[:6]}, category="number"),
    T(("show the {kind} in git", "list the {kind} in git", "git show {kind}"),
      {"kind": ab("staged changes", "unstaged changes", "untracked files")}, category="scope"),
    T(("{op} a file {where} in git", "{op} a file {where} with git"),
      {"op": ab("ignore", "track"), "where": ab("locally", "globally")}),
    T(("list {what} in a directory", "show {what} in a folder", "print {what} of a directory"),
      {"what": ab("all files|the files", "hidden files", "only directories|only subfolders", "files sorted by size")},
      category="scope"),
    T(("find files {cond} than {n} {unit}", "search for files {cond} than {n} {unit}"),
      {"cond": ab("larger|bigger", "smaller"), "n": BIG_NUMBERS[:6], "unit": DATA_UNITS[:3]}, category="number"),
    T(("find files modified in the last {n} {unit}", "list files changed within the last {n} {unit}"),
      {"n": SMALL_NUMBERS, "unit": ab("days", "hours", "minutes")}, category="number"),
    T(("{op} a port in the firewall on {os}", "{op} port {port} in the {os} firewall"),
      {"op": ab("open|allow", "close|block"), "port": [("80",), ("443",), ("22",), ("8080",), ("3306",)], "os": OSES[:4]}),
    T(("{op} SSH access on {os}", "{op} the SSH server on {os}"),
      {"op": ab("enable|turn on", "disable|turn off"), "os": OSES[:5]}),
    T(("{op} a group on {os}", "{op} the sudo group on {os}"),
      {"op": ab("add a user to|put a user in", "remove a user from|take a user out of"), "os": OSES[2:5]}),
    T(("{op} a disk on {os}", "{op} a drive on {os}"),
      {"op": ab("mount", "unmount|eject", "format"), "os": OSES[:4]}),
    T(("{op} dark mode on {os}", "{op} dark theme in {os}"),
      {"op": ab("enable|turn on|switch on", "disable|turn off|switch off"), "os": OSES}),
    T(("check which process uses port {port} on {os}", "find what is listening on port {port} on {os}"),
      {"port": [("80",), ("443",), ("3000",), ("5432",), ("8080",)], "os": OSES[:4]}, category="number"),
    # --- CSS / web (scope)
    T(("center {obj} in CSS", "center {obj} with CSS", "CSS to center {obj}"),
      # "Center a div" usually means both axes, so spelling that out is the same question.
      {"obj": ab("a div|a div horizontally and vertically|a div both ways", "text inside a div|the text in a div",
                 "an image", "a button inside a form")}, category="scope"),
    T(("{op} an element with JavaScript", "{op} a DOM element in JS"),
      {"op": ab("show|display", "hide", "remove|delete", "disable")}),
    T(("{op} {what} in CSS", "{op} {what} with CSS"),
      {"op": [("change", "set")], "what": ab("the font size", "the background color", "the border color",
                                                    "the text color", "the line height")}, category="entity"),
    T(("make {what} {state}", "set {what} to {state}"),
      {"what": ab("a text input|an input field", "a checkbox", "a button"),
       "state": ab("read-only|readonly", "disabled", "required", "hidden")}),
    T(("{op} a table row {pos} in HTML", "{op} a row {pos} of an HTML table"),
      {"op": [("add", "insert")], "pos": ab("at the top|at the beginning", "at the bottom|at the end")}),
    T(("scroll to the {pos} of the page", "jump to the {pos} of the page with JavaScript"),
      {"pos": ab("top", "bottom")}),
    T(("align text to the {side} in CSS", "{side}-align text with CSS"),
      {"side": ab("left", "right", "center")}),
    # --- dates and times
    T(("get the {when} date", "compute the {when} date"),
      {"when": ab("current|today's", "yesterday's|previous day's", "tomorrow's|next day's")}, frames="lang"),
    T(("add {n} days to a date", "add {n} days to a datetime"),
      {"n": SMALL_NUMBERS}, frames="lang", category="number"),
    T(("shift a date {op} by {n} {unit}", "move a date {op} by {n} {unit}", "move the current date {op} by {n} {unit}"),
      {"op": ab("forward|ahead", "back|backward"), "n": SMALL_NUMBERS[:6], "unit": ab("days", "weeks", "months", "hours")},
      frames="lang", category="number"),
    T(("convert a timestamp to {fmt}", "format a date as {fmt}"),
      {"fmt": ab("ISO 8601|ISO format", "YYYY-MM-DD", "DD/MM/YYYY", "a Unix timestamp|epoch seconds")},
      frames="lang", category="entity"),
    # --- general, non-coding (keeps the model from learning "coding words only")
    T(("{op} my {svc} subscription", "{op} my {svc} membership", "{op} {svc}"),
      {"op": ab("cancel|end", "renew|extend", "pause", "upgrade"), "svc": STREAMING}),
    T(("{op} my {acct} account", "{op} an account on {acct}"),
      {"op": ab("delete|close", "deactivate|suspend", "create|sign up for|open"), "acct": ACCOUNTS}),
    T(("{op} two-step verification on {acct}", "{op} 2-step verification for my {acct} account",
       "{op} two-factor login on {acct}"),
      {"op": ab("turn on|enable|set up", "turn off|disable|remove"), "acct": ACCOUNTS[:6]}),
    T(("{op} notifications on my phone", "{op} push notifications on my phone"),
      {"op": ab("turn on|enable|allow", "turn off|disable|mute|block")}),
    T(("{op} location sharing on {os}", "{op} location services on {os}"),
      {"op": ab("turn on|enable", "turn off|disable"), "os": [("Android",), ("iOS", "iPhone")]}),
    T(("convert {n} {u1} to {u2}", "how many {u2} are in {n} {u1}", "{n} {u1} in {u2}"),
      {"n": BIG_NUMBERS, "u1": LENGTH_UNITS[:2], "u2": LENGTH_UNITS[:2]}, swap=("u1", "u2"), category="number", frames="question"),
    T(("convert {n} {u1} to {u2}", "how many {u2} is {n} {u1}", "{n} {u1} in {u2}"),
      {"n": BIG_NUMBERS[:5], "u1": WEIGHT_UNITS[:2], "u2": WEIGHT_UNITS[:2]}, swap=("u1", "u2"), category="number", frames="question"),
    T(("convert {n} degrees {u1} to {u2}", "{n} degrees {u1} in {u2}", "what is {n} {u1} in {u2}"),
      {"n": [(str(n),) for n in (0, 10, 25, 37, 100)], "u1": TEMP_UNITS[:2], "u2": TEMP_UNITS[:2]},
      swap=("u1", "u2"), category="number", frames="question"),
    T(("convert {n} {u1} to {u2}", "how many {u2} is {n} {u1}", "exchange {n} {u1} for {u2}"),
      {"n": BIG_NUMBERS, "u1": CURRENCIES, "u2": CURRENCIES}, swap=("u1", "u2"), category="number", frames="question"),
    T(("how many {u2} are in {n} {u1}", "convert {n} {u1} to {u2}"),
      {"n": SMALL_NUMBERS[:5], "u1": DATA_UNITS, "u2": DATA_UNITS}, swap=("u1", "u2"), category="number", frames="question"),
    T(("how many {u2} are in {n} {u1}", "convert {n} {u1} into {u2}"),
      {"n": SMALL_NUMBERS, "u1": TIME_UNITS, "u2": TIME_UNITS}, swap=("u1", "u2"), category="number", frames="question"),
    T(("what is the weather in {city} on {day}", "weather forecast for {city} on {day}", "will it rain in {city} on {day}"),
      {"city": CITIES, "day": WEEKDAYS}, category="number", frames="question"),
    T(("flights from {c1} to {c2}", "cheapest flight from {c1} to {c2}", "how long is the flight from {c1} to {c2}"),
      {"c1": CITIES, "c2": CITIES}, swap=("c1", "c2"), category="entity", frames="question"),
    T(("what time is it in {city}", "current local time in {city}", "time zone of {city}"),
      {"city": CITIES}, category="entity", frames="question"),
    T(("what is the capital of {country}", "capital city of {country}", "which city is the capital of {country}"),
      {"country": COUNTRIES}, category="entity", frames="question"),
    T(("do I need a visa to visit {country}", "visa requirements for travelling to {country}"),
      {"country": COUNTRIES}, category="entity", frames="question"),
    T(("how do you say {word} in {lang2}", "translate {word} into {lang2}", "what is {word} in {lang2}"),
      {"word": ab("thank you|thanks", "good morning", "goodbye|bye", "I love you"), "lang2": SPOKEN}, category="entity", frames="question"),
    T(("how many calories are in {n} grams of {food}", "calories in {n}g of {food}"),
      {"n": [("50",), ("100",), ("200",), ("250",)], "food": FOODS}, category="number", frames="question"),
    T(("who won the World Cup in {year}", "winner of the {year} World Cup"),
      {"year": [(y,) for y in ("1998", "2002", "2006", "2010", "2014", "2018", "2022")]}, category="number", frames="question"),
    T(("what are the public holidays in {country} in {month}", "bank holidays in {country} in {month}"),
      {"country": COUNTRIES[:6], "month": MONTHS}, category="number", frames="question"),
    T(("tax filing deadline for {year}", "when are {year} taxes due", "deadline to file taxes for {year}"),
      {"year": YEARS}, category="number", frames="question"),
    T(("{op} weight {speed}", "{op} weight {speed} and safely"),
      {"op": ab("lose", "gain|put on"), "speed": ab("fast|quickly", "slowly|gradually")}),
    T(("should I drink water {when} a meal", "is it good to drink water {when} eating"),
      {"when": ab("before", "after", "during")}, frames="question"),
    T(("should I take ibuprofen {when} food", "is it ok to take ibuprofen {when} eating"),
      {"when": ab("with|together with", "without|on an empty stomach")}, frames="question"),
    T(("how to {op} my blood pressure", "ways to {op} blood pressure naturally"),
      {"op": ab("lower|reduce|decrease", "raise|increase")}, frames="question"),
    T(("how to {op} my credit score", "ways to {op} a credit score"),
      {"op": ab("improve|raise|increase", "check|see")}, frames="question"),
    T(("{op} the volume on my laptop", "make my laptop {louder}"),
      {"op": ab("turn up|increase", "turn down|decrease"), "louder": [("louder",)]}),
    T(("how long to boil {n} eggs", "boiling time for {n} eggs {style}"),
      {"n": SMALL_NUMBERS[:4], "style": ab("soft-boiled|soft", "hard-boiled|hard")}, frames="question"),
    T(("best time to visit {city} in {season}", "is {city} worth visiting in {season}"),
      {"city": CITIES, "season": ab("summer", "winter", "spring", "autumn|fall")}, frames="question"),
    T(("{op} a PDF", "{op} a PDF file"),
      {"op": ab("merge|combine", "split", "compress|shrink", "password-protect|encrypt")}),
]


# ------------------------------------------------------------------ frames
# Frames wrap a task phrase {t} for a language {lang}. Several kinds, so positives cover the
# forms users and agents really send: question, terse, chatty, reordered, "?"-less command.
LANG_FRAMES = (
    "How do I {t} in {lang}?", "How can I {t} in {lang}?", "How to {t} in {lang}?", "how to {t} in {lang}",
    "{T} in {lang}", "{t} in {lang}", "{lang}: {t}", "{lang} - how to {t}?", "In {lang}, how do I {t}?",
    "In {lang}, how do you {t}?", "What's the best way to {t} in {lang}?", "What is the easiest way to {t} in {lang}?",
    "Is there a way to {t} in {lang}?", "Can you show me how to {t} in {lang}?", "I need to {t} in {lang}. How?",
    "{T} using {lang}", "{T} with {lang}", "Using {lang}, {t}", "{lang} {t}", "{t} {lang}",
    "Hi! Quick question: how would I {t} in {lang}? Thanks", "Hey, I'm new to {lang}. How do I {t}?",
    "Could someone explain how to {t} in {lang}? Any help appreciated.", "Write {lang} code to {t}",
    "Give me a {lang} snippet to {t}", "Show me how to {t} in {lang}", "{lang} code to {t}?",
    "What {lang} function do I use to {t}?", "Please help: {t} in {lang}",
)
PLAIN_FRAMES = (
    "How do I {t}?", "How can I {t}?", "How to {t}?", "how to {t}", "{T}", "{t}", "What's the best way to {t}?",
    "What is the easiest way to {t}?", "Is there a way to {t}?", "Can you tell me how to {t}?", "I want to {t}. How?",
    "Hi, quick question: how do I {t}? Thanks!", "Could someone explain how to {t}? I'm stuck.", "Steps to {t}",
    "What are the steps to {t}?", "Please help me {t}", "Help: {t}", "{T}?", "{T} - how?", "Tell me how to {t}",
    "I'd like to {t}, what should I do?", "what's the command to {t}", "Any tips to {t}?",
)
# Tasks that already are questions ("what time is it in Paris") only get punctuation and chat.
QUESTION_FRAMES = ("{T}?", "{t}", "{T}", "{t}?", "Quick question: {t}?", "Does anyone know {t}?", "Hey, {t}?",
                   "{T}? Thanks!", "I was wondering, {t}?", "{t} please", "Hi! {T}?", "{T}??")
NOUN_LANG_FRAMES = ("{lang} {t}", "{t} in {lang}", "{t} {lang}", "{T} in {lang}", "{lang}: {t}", "{t} ({lang})",
                    "{lang} {t} example", "{T} written in {lang}")
# (affirmative, negated) frame pairs: the same task with "not" / "without" flips the answer.
NEGATION_FRAMES = (
    ("Should I {t}?", "Should I not {t}?"),
    ("Why should I {t}?", "Why shouldn't I {t}?"),
    ("Is it safe to {t}?", "Is it unsafe to {t}?"),
    ("What happens if I {t}?", "What happens if I don't {t}?"),
    ("When should I {t}?", "When should I avoid having to {t}?"),
    ("Is it possible to {t}?", "Is it impossible to {t}?"),
    ("Is it a good idea to {t}?", "Is it a bad idea to {t}?"),
    ("Reasons to {t}", "Reasons not to {t}"),
    ("Why do people {t}?", "Why don't people {t}?"),
    ("Is it recommended to {t}?", "Is it not recommended to {t}?"),
    ("Can I {t}?", "Can't I {t}?"),
    ("Do I have to {t}?", "Do I have to avoid having to {t}?"),
)
CHATTY_PREFIXES = ("", "", "", "", "Hi, ", "Hey! ", "Quick question: ", "Sorry if this is dumb, but ", "Hello everyone, ",
                   "I'm a beginner. ", "Newbie here. ")
CHATTY_SUFFIXES = ("", "", "", "", " Thanks!", " Thanks in advance.", " Any help is appreciated.", " :)", " ASAP please",
                   " I've been stuck for hours.")


@dataclass(frozen=True)
class GeneratedPair:
    a: str
    b: str
    duplicate: bool
    category: str  # paraphrase | surface | antonym | negation | entity | number | scope | swap | unrelated


@dataclass
class _Renderer:
    rng: random.Random

    def pick(self, values: V) -> str:
        return self.rng.choice(values)

    def phrase(self, template: str, values: dict[str, V]) -> str:
        # One alias per slot; templates may pick an alternative with "x|y".
        template = self.pick(tuple(template.split("|")))
        filled = {k: self.pick(v) for k, v in values.items()}
        out = template
        for slot, word in filled.items():
            out = out.replace("{" + slot + "}", word)
        return out


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _frame(frame: str, t: str, lang: str | None) -> str:
    out = frame.replace("{T}", _cap(t)).replace("{t}", t)
    if lang is not None:
        out = out.replace("{lang}", lang)
    return out


def _frames_for(task: Task) -> tuple[str, ...]:
    return {"lang": LANG_FRAMES, "none": PLAIN_FRAMES, "question": QUESTION_FRAMES}[task.frames]


def _surface_variant(rng: random.Random, s: str) -> str:
    """The same words with a different case, punctuation or chatty wrapper."""
    choice = rng.randrange(4)
    if choice == 0:
        return s.lower().rstrip("?.!")
    if choice == 1:
        return s.rstrip("?.!") + "?"
    if choice == 2:
        return rng.choice(CHATTY_PREFIXES[4:]) + s[:1].lower() + s[1:]
    return s + rng.choice(CHATTY_SUFFIXES[4:])


def _distinct(a: str, b: str) -> str:
    """``b``, changed in form only if it came out identical to ``a`` (identical pairs teach nothing)."""
    if b != a:
        return b
    plain = b.lower().rstrip("?.!")
    return plain if plain != a else b + " Thanks!"


def _chat(rng: random.Random, s: str) -> str:
    prefix, suffix = rng.choice(CHATTY_PREFIXES), rng.choice(CHATTY_SUFFIXES)
    if prefix:
        s = prefix + s[:1].lower() + s[1:]
    return s + suffix


class Generator:
    """Renders tasks into labelled pairs; one seeded RNG drives every choice."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    # ---- helpers
    def _values(self, task: Task) -> dict[str, V]:
        return {k: self.rng.choice(v) for k, v in task.slots.items()}

    def _lang(self, task: Task) -> V | None:
        return self.rng.choice(LANGS) if task.frames == "lang" else None

    def _render(self, task: Task, values: dict[str, V], lang: V | None, *, template: str | None = None,
                frame: str | None = None, use_noun: bool = False, alias_seed: int | None = None) -> str:
        rng = random.Random(alias_seed) if alias_seed is not None else self.rng
        renderer = _Renderer(rng)
        if use_noun and task.nouns and lang is not None:
            t = renderer.phrase(template or rng.choice(task.nouns), values)
            frame = frame or rng.choice(NOUN_LANG_FRAMES)
        else:
            t = renderer.phrase(template or rng.choice(task.templates), values)
            if frame is None:
                frame = rng.choice(_frames_for(task))
        return _frame(frame, t, renderer.pick(lang) if lang is not None else None)

    # ---- positives
    def positive(self) -> GeneratedPair:
        task = self.rng.choice(TASKS)
        values, lang = self._values(task), self._lang(task)
        kind = self.rng.random()
        if kind < 0.15:
            a = self._render(task, values, lang)
            return GeneratedPair(a, _distinct(a, _surface_variant(self.rng, a)), True, "surface")
        use_noun = bool(task.nouns) and lang is not None and self.rng.random() < 0.3
        a = self._render(task, values, lang, use_noun=use_noun)
        b = self._render(task, values, lang, use_noun=self.rng.random() < 0.5 and use_noun)
        if self.rng.random() < 0.3:
            b = _chat(self.rng, b)
        return GeneratedPair(a, _distinct(a, b), True, "paraphrase")

    def negated_positive(self) -> GeneratedPair:
        # The same negated question, reworded: negation words alone must not mean "different".
        task = self.rng.choice([t for t in TASKS if t.frames == "none"])
        values = self._values(task)
        aff, neg = self.rng.choice(NEGATION_FRAMES)
        frame = neg if self.rng.random() < 0.5 else aff
        a = self._render(task, values, None, frame=frame)
        b = self._render(task, values, None, frame=frame)
        return GeneratedPair(a, _distinct(a, b), True, "paraphrase")

    # ---- negatives
    def negative(self) -> GeneratedPair:
        task = self.rng.choice(TASKS)
        values, lang = self._values(task), self._lang(task)
        category = task.category
        changed = dict(values)
        lang_b = lang
        roll = self.rng.random()
        if task.swap and roll < 0.5 and values[task.swap[0]] != values[task.swap[1]]:
            s1, s2 = task.swap
            changed[s1], changed[s2] = values[s2], values[s1]
            category = "swap"
        elif lang is not None and roll < 0.3:
            lang_b = self.rng.choice([x for x in LANGS if x != lang])
            category = "entity"
        else:
            options = [k for k, v in task.slots.items() if len(v) > 1]
            if not options:
                return self.unrelated()
            slot = self.rng.choice(options)
            changed[slot] = self.rng.choice([x for x in task.slots[slot] if x != values[slot]])
        if task.swap and changed[task.swap[0]] == changed[task.swap[1]]:
            return self.negative()  # "convert km to km" is not a question anyone asks
        if task.swap and values[task.swap[0]] == values[task.swap[1]]:
            return self.negative()
        use_noun = bool(task.nouns) and lang is not None and self.rng.random() < 0.3
        template = self.rng.choice(task.nouns if use_noun else task.templates)
        frame = self.rng.choice(NOUN_LANG_FRAMES if use_noun else _frames_for(task))
        minimal = self.rng.random() < 0.65
        seed = self.rng.randrange(1 << 30)
        # Minimal edit: same template, frame and alias choices, only the changed value differs.
        a = self._render(task, values, lang, template=template, frame=frame, use_noun=use_noun, alias_seed=seed)
        if minimal:
            b = self._render(task, changed, lang_b, template=template, frame=frame, use_noun=use_noun, alias_seed=seed)
        else:
            b = self._render(task, changed, lang_b, use_noun=use_noun)
            if self.rng.random() < 0.3:
                b = _chat(self.rng, b)
        if a.lower() == b.lower():
            return self.negative()
        return GeneratedPair(a, b, False, category)

    def negation(self) -> GeneratedPair:
        task = self.rng.choice([t for t in TASKS if t.frames == "none"])
        values = self._values(task)
        aff, neg = self.rng.choice(NEGATION_FRAMES)
        seed = self.rng.randrange(1 << 30)
        a = self._render(task, values, None, frame=aff, alias_seed=seed)
        b = self._render(task, values, None, frame=neg, alias_seed=seed)
        if self.rng.random() < 0.5:
            a, b = b, a
        return GeneratedPair(a, b, False, "negation")

    def unrelated(self) -> GeneratedPair:
        t1, t2 = self.rng.sample(TASKS, 2)
        # Same language when both are coding tasks: only the task differs.
        lang = self._lang(t1) or self._lang(t2)
        a = self._render(t1, self._values(t1), lang if t1.frames == "lang" else None)
        b = self._render(t2, self._values(t2), lang if t2.frames == "lang" else None)
        return GeneratedPair(a, b, False, "unrelated")


def generate_pairs(n: int, seed: int) -> list[GeneratedPair]:
    """``n`` pairs, about half duplicates: positives (paraphrase/surface, some negated), hard
    negatives (antonym, entity, number, scope, swap, negation) and a few unrelated ones."""
    gen = Generator(seed)
    makers = (
        (0.40, gen.positive),
        (0.08, gen.negated_positive),
        (0.40, gen.negative),
        (0.08, gen.negation),
        (0.04, gen.unrelated),
    )
    weights = [w for w, _ in makers]
    out: list[GeneratedPair] = []
    seen: set[tuple[str, str]] = set()
    while len(out) < n:
        maker = gen.rng.choices([m for _, m in makers], weights=weights)[0]
        pair = maker()
        key = (pair.a.lower(), pair.b.lower())
        if key in seen:
            continue
        seen.add(key)
        if gen.rng.random() < 0.5:  # order must not carry the label
            pair = GeneratedPair(pair.b, pair.a, pair.duplicate, pair.category)
        out.append(pair)
    return out

