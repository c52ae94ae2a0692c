{#- A coercion error: {'field': name, 'value': text} when the text is not empty and `parsed` (its value, read) is
    NULL, else NULL. An empty text is an absent value; white space alone is a value that does not parse. -#}
{% macro coercion_error(name, text, parsed) -%}
CASE WHEN {{ parsed }} IS NULL AND {{ text }} <> ''
             THEN {'field': '{{ name }}', 'value': {{ text }}} END
{%- endmacro %}
{#- KSQL 5.1.1 reads an INTEGER field with Java's Integer.parseInt: an optional sign and decimal digits, in range.
    DuckDB's TRY_CAST would also take '2.5' (as 3), '0x1F', '1_000' and ' 5000'. `type`: BIGINT reads as Java's
    Long.parseLong. -#}
{% macro ksql_integer(text, type='INTEGER') -%}
CASE WHEN regexp_full_match({{ text }}, '[+-]?[0-9]+') THEN TRY_CAST({{ text }} AS {{ type }}) END
{%- endmacro %}
{#- The coercion error of an INTEGER (or `type`) field that does not parse as ksql_integer does. -#}
{% macro ksql_integer_error(name, text, type='INTEGER') -%}
{{ coercion_error(name, text, ksql_integer(text, type)) }}
{%- endmacro %}
