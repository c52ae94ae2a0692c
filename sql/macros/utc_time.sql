{#- Sysmon's UtcTime ('yyyy-MM-dd HH:mm:ss.SSS', UTC) as a TIMESTAMP, as the recipe's STRINGTOTIMESTAMP reads it:
    every digit of the pattern present, as Java's DateTimeFormatter requires (DuckDB's strptime alone reads
    '26-11-01' as the year 26, '.4' as 400 ms and skips spaces), and no year 0000, which 'yyyy' (the year of the
    era) does not hold (DuckDB's strptime reads it as 1 BC); NULL if the text does not parse. -#}
{% macro utc_time(text) -%}
CASE WHEN {{ text }} GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]'
          AND NOT starts_with({{ text }}, '0000')
     THEN try_strptime({{ text }}, '%Y-%m-%d %H:%M:%S.%g') END
{%- endmacro %}
{#- The coercion error of a UtcTime that does not parse (coercion_error: macros/ksql_integer.sql). -#}
{% macro utc_time_error(text) -%}
{{ coercion_error('UtcTime', text, utc_time(text)) }}
{%- endmacro %}
