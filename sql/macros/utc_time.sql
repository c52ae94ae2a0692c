{#- Sysmon's UtcTime ('yyyy-MM-dd HH:mm:ss.SSS', UTC) as a TIMESTAMP, as the recipe's STRINGTOTIMESTAMP reads it;
    NULL if the text does not parse. -#}
{% macro utc_time(text) -%}
try_strptime({{ text }}, '%Y-%m-%d %H:%M:%S.%g')
{%- endmacro %}
{#- The coercion error of a UtcTime that does not parse (coercion_error: macros/ksql_integer.sql). -#}
{% macro utc_time_error(text) -%}
{{ coercion_error('UtcTime', text, utc_time(text)) }}
{%- endmacro %}
