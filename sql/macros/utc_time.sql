{#- Sysmon's UtcTime ('yyyy-MM-dd HH:mm:ss.SSS', UTC) as a TIMESTAMP, as the recipe's STRINGTOTIMESTAMP reads it;
    NULL if the text does not parse. -#}
{% macro utc_time(text) -%}
try_strptime({{ text }}, '%Y-%m-%d %H:%M:%S.%g')
{%- endmacro %}
{#- A coercion error of UtcTime: {'field': 'UtcTime', 'value': text} when the text is not blank and does not
    parse, else NULL. -#}
{% macro utc_time_error(text) -%}
CASE WHEN {{ utc_time(text) }} IS NULL AND nullif(trim({{ text }}), '') IS NOT NULL
             THEN {'field': 'UtcTime', 'value': {{ text }}} END
{%- endmacro %}
