{#- Parsing JSON text against a layout (a dict of field name -> DuckDB type or nested dict), matching field names
    whatever their letter case, as KSQL's JSON deserializer does. -#}

{#- A layout as from_json's type text, keys in the order written (the tojson filter would sort them). -#}
{% macro json_type(node) -%}
{%- if node is mapping -%}
{{ '{' }}{% for key, value in node.items() %}"{{ key }}": {{ json_type(value) }}{{ ', ' if not loop.last }}{% endfor %}{{ '}' }}
{%- else -%}
"{{ node }}"
{%- endif -%}
{%- endmacro %}

{#- Every key of a layout, at any depth, each followed by a comma. -#}
{% macro keys_of(node) -%}
{%- for key, value in node.items() -%}{{ key }},{{ keys_of(value) if value is mapping }}{%- endfor -%}
{%- endmacro %}

{#- The letters that upper-case to one ASCII letter besides its own two cases (in Java's toUpperCase, as KSQL
    compares names, and in DuckDB's upper): the dotless i and the long s. -#}
{% set upper_cases_to = {'i': 'ı', 's': 'ſ'} %}

{#- `c` in any letter case, as regex alternatives for a class. -#}
{% macro cases_of(c) -%}
{{ c.upper() ~ c.lower() ~ upper_cases_to.get(c.lower(), '') }}
{%- endmacro %}

{#- A regex for `word` in any letter case, with ASCII classes: (?i) would fold Unicode too, a larger, slower DFA. -#}
{% macro any_case(word) -%}
{%- for c in word %}{{ '[' ~ cases_of(c) ~ ']' if c.upper() != c.lower() else c }}{% endfor -%}
{%- endmacro %}

{#- A regex for the spellings of one word (spellings: the ways the layouts write it, all equal ignoring case)
    that differ from every one of them in letter case: at the first letter that differs, anything may follow. -#}
{% macro other_cases(spellings) -%}
{%- set alternatives = [] -%}
{%- if spellings[0] -%}
{%- for letter in cases_of(spellings[0][0])|list|unique(case_sensitive=true) -%}
{%- set rests = [] -%}
{%- for spelling in spellings if spelling[0] == letter %}{% set _ = rests.append(spelling[1:]) %}{% endfor -%}
{%- if not rests -%}
{%- set _ = alternatives.append(letter ~ any_case(spellings[0][1:])) -%}
{%- elif rests[0] -%}
{%- set inner = other_cases(rests) -%}
{%- set _ = alternatives.append(letter ~ inner) if inner -%}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{{ '(?:' ~ alternatives|join('|') ~ ')' if alternatives }}
{%- endmacro %}

{#- A SQL condition: does the JSON text hold a key that spells one of `spellings` (the field names of the layouts,
    as they write them) in another letter case? One regex scan, so lines in the layouts' own case parse once. -#}
{% macro has_other_case_key(text, spellings) -%}
{%- set words = [] %}
{%- for word in spellings|select|map('lower')|unique %}
{%- set same_word = [] %}{% for spelling in spellings|select|unique(case_sensitive=true) if spelling|lower == word %}{% set _ = same_word.append(spelling) %}{% endfor %}
{%- set _ = words.append(other_cases(same_word)) %}
{%- endfor -%}
regexp_matches({{ text }}, '"(?:{{ words|join('|') }})"\s*:')
{%- endmacro %}

{#- SQL: `text` with each match of the regex `token` (a SQL string literal) replaced by `rewrite` (SQL reading the
    match as t[1]); the text between matches is kept as it is. -#}
{% macro tokens_rewritten(text, token, rewrite) -%}
regexp_split_to_array({{ text }}, {{ token }})[1] || array_to_string(list_transform(
    list_zip(regexp_extract_all({{ text }}, {{ token }}), regexp_split_to_array({{ text }}, {{ token }})[2:]),
    t -> {{ rewrite }} || t[2]), '')
{%- endmacro %}

{#- The JSON text with every object key that spells a key of `layout` (ignoring case) upper-cased; the other keys
    (those of a value that is itself an object) and the values are copied as they are. It walks the string tokens in
    order, so a quote inside a value never starts a key. A key holding an escape is decoded, upper-cased and written
    anew (upper-casing \u0047 as written would break it). -#}
{% set json_string_token %}'"(?:[^"\\]|\\.)*"\s*:?'{% endset %}
{% set key_end %}': ' || chr(9) || chr(10) || chr(13){% endset %}
{% set upper_name -%}
CASE WHEN contains(t[1], '\') THEN CAST(to_json(upper(try(json_extract_string(rtrim(t[1], {{ key_end }}), '$')))) AS VARCHAR)
     ELSE upper(rtrim(t[1], {{ key_end }})) END
{%- endset %}
{% macro upper_keys(text, layout) -%}
{%- set names = [] -%}
{%- for key in keys_of(layout).split(',') if key %}{% set _ = names.append("'\"" ~ key|upper ~ "\"'") %}{% endfor -%}
{{ tokens_rewritten(text, json_string_token, "CASE WHEN ends_with(t[1], ':') AND list_contains([" ~ names|unique|join(', ') ~ "], " ~ upper_name ~ ") THEN " ~ upper_name ~ " || ':' ELSE t[1] END") }}
{%- endmacro %}

{#- Parse with a layout's exact field names; a line that spells a field in another letter case (other_case, a SQL
    condition) is parsed with its keys and the layout's names upper-cased, so "processguid", "PROCESSGUID" and
    "ProcessGuid" all match (KSQL 5.1.1 compares upper-cased names). Two keys of one object that differ only in
    case: the first in the line wins there (from_json keeps the first of equal keys). If the upper-cased text
    should not parse, the exact parse stands. -#}
{% macro from_json_any_case(text, layout, other_case) -%}
CASE WHEN {{ other_case }}
     THEN coalesce(try(from_json({{ upper_keys(text, layout) }}, '{{ json_type(layout)|upper }}')), try(from_json({{ text }}, '{{ json_type(layout) }}')))
     ELSE try(from_json({{ text }}, '{{ json_type(layout) }}')) END
{%- endmacro %}

{#- A JSON path (SQL text) to the object under the keys `names`, found ignoring case when the line spells them
    in another case: the first matching key at each level, as the upper-cased parse finds. Quoting a found key in
    the path is safe: upper-cased it is one of these names, so it holds no quote or backslash. -#}
{% macro path_ignoring_case(text, names, path="'$'") -%}
{%- if names -%}
{{ path_ignoring_case(text, names[1:], path ~ " || '.\"' || list_filter(json_keys(" ~ text ~ ", " ~ path ~ "), lambda k: upper(k) = '" ~ names[0]|upper ~ "')[1] || '\"'") }}
{%- else -%}
{{ path }}
{%- endif -%}
{%- endmacro %}

{#- JSON text with each escaped lone UTF-16 surrogate (a \ud83d without its pair, which DuckDB's parser rejects with
    the whole text) written as the marker U+FDD0 (a noncharacter) followed by its escape as text: "a\ud83d" reads
    as 'a' || chr(64976) || '\ud83d'. It walks the escapes in order, so an escaped backslash never starts one. -#}
{% set json_surrogate_token %}'\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[dD][89a-fA-F][0-9a-fA-F]{2}'{% endset %}
{% set marked_if_lone %}CASE WHEN length(t[1]) = 6 THEN chr(64976) || '\' || t[1] ELSE t[1] END{% endset %}
{% macro marked_lone_surrogates(text) -%}
{{ tokens_rewritten(text, json_surrogate_token, marked_if_lone) }}
{%- endmacro %}

{#- A line's bytes (a BLOB) that are not valid UTF-8 as text: each byte that starts no valid UTF-8 sequence is
    written as the marker U+FDD0 followed by \\xNN (in a JSON string it reads as the text \xNN), the rest decoded.
    DuckDB casts a BLOB to VARCHAR writing every byte that is not printable ASCII, quotes and backslashes
    included, as \xNN: a token is one valid sequence (RFC 3629) in that form, or else one byte. -#}
{% set utf8_continuation %}\\x[89AB][0-9A-F]{% endset %}
{% set utf8_token -%}
'\\x(?:[0-7][0-9A-F]|(?:C[2-9A-F]|D[0-9A-F]){{ utf8_continuation }}
|E0\\x[AB][0-9A-F]{{ utf8_continuation }}|E[1-9A-CEF]{{ utf8_continuation * 2 }}|ED\\x[89][0-9A-F]{{ utf8_continuation }}
|F0\\x[9AB][0-9A-F]{{ utf8_continuation * 2 }}|F[1-3]{{ utf8_continuation * 3 }}
|F4\\x8[0-9A-F]{{ utf8_continuation * 2 }}
|[0-9A-F]{2})'
{%- endset %}
{% set marked_if_invalid -%}
CASE WHEN length(t[1]) = 4 AND t[1] >= '\x80' THEN chr(64976) || '\' || t[1]
     ELSE decode(unhex(replace(t[1], '\x', ''))) END
{%- endset %}
{% macro marked_invalid_utf8(bytes) -%}
{{ tokens_rewritten('CAST(' ~ bytes ~ ' AS VARCHAR)', utf8_token | replace('\n', ''), marked_if_invalid) }}
{%- endmacro %}

{#- The first `count` characters at most of a line's bytes that are not valid UTF-8, as a reject shows them: each byte
    that starts no valid UTF-8 sequence written \xNN (never cut in two), the rest decoded. A character takes four
    bytes at the most, so the first 4 * count bytes are enough. A mark is U+FDD0, a backslash and \xNN: a mark with
    fewer than its five characters after U+FDD0 at the end was cut. -#}
{% macro first_characters_marking_invalid_utf8(bytes, count) -%}
{%- set marked = marked_invalid_utf8(bytes ~ '[1:' ~ count * 4 ~ ']') -%}
replace(regexp_replace(left({{ marked }}, {{ count }}), chr(64976) || '[^' || chr(64976) || ']{0,4}$', ''), chr(64976) || '\', '')
{%- endmacro %}
