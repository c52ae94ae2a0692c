{#- One canonical form per GUID: trimmed of braces and white space (space, tab, CR, LF, no-break space), upper
    case, in braces. A GUID that is empty once trimmed ('', '{}') stays '': KSQL keys on '' as on any other value
    (PARTITION BY, the table's KEY), so a process create with ProcessGuid '' is a table row and a connection with ''
    joins it. NULL stays NULL. -#}
{% macro canonical_guid(text) -%}
{%- set trimmed = "trim(" ~ text ~ ", '{} ' || chr(9) || chr(10) || chr(13) || chr(160))" -%}
CASE WHEN {{ trimmed }} = '' THEN '' ELSE '{' || upper({{ trimmed }}) || '}' END
{%- endmacro %}
