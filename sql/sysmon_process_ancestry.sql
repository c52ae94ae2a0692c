-- Not a recipe step: each process's chain of ancestors (parent, grandparent, ...), followed through
-- parent_process_guid in sysmon_process_create_table for at most ancestry_depth generations, with how the chain
-- ends: 'root' (the oldest process names no parent), 'missing_parent' (its parent's create has not arrived),
-- 'depth_limit' (more generations than ancestry_depth) or 'cycle' (the chain comes back to a process already in
-- it: bad data). A batch rewrites the rows of the processes whose create it brought and of their descendants,
-- so an ancestor that arrives late fills in the chains below it.
{#- Each join below is written with the whole process table on its left: DuckDB builds a join's hash table from
    its right side, here the few processes a batch looks up. Left to choose, DuckDB goes by estimates, which for
    the recursive CTEs are far too high, and built from the whole table instead: over 1.2 million processes the
    query took about twice as long. -#}
{{ config(materialized='table', unique_key='process_guid', order_by='_seq', group='hunting',
          duckdb_settings={'disabled_optimizers': 'build_side_probe_side'}) }}
{% set depth = var('ancestry_depth') | int %}
{#- A parent GUID that names no process: none at all, or Sysmon's all-zero GUID. -#}
{% macro names_no_process(guid) -%}
({{ guid }} IS NULL OR {{ guid }} IN ('', '{00000000-0000-0000-0000-000000000000}'))
{%- endmacro %}
{#- An executable's file name, from a Windows (or any) path; '?' when the create had no Image. -#}
{% macro file_name(path) -%}
coalesce(nullif(regexp_extract({{ path }}, '[^\\/]*$'), ''), '?')
{%- endmacro %}
WITH RECURSIVE processes AS MATERIALIZED (
    -- the walk reads the keys only: path and command line are read for the processes it reaches (described)
    SELECT process_guid, parent_process_guid
    FROM {{ ref('sysmon_process_create_table') }}
),
-- The processes whose chain may have changed: those this batch brought a create for, and their descendants down
-- to `depth` generations (a process further below does not have them in its chain). The depth bounds the walk
-- even through a cycle.
changed(process_guid, generation) USING KEY (process_guid) AS (
    SELECT DISTINCT process_guid, 0
    FROM {{ ref('sysmon_process_create') }}
    WHERE process_guid IS NOT NULL
    UNION
    SELECT child.process_guid, c.generation + 1
    FROM processes AS child
    JOIN changed AS c ON child.parent_process_guid = c.process_guid
    -- a process whose own GUID names no process is nobody's parent, whatever its children's events say
    WHERE c.generation < {{ depth }} AND NOT {{ names_no_process('c.process_guid') }}
),
-- Each changed process's chain (members: the process, its parent, ...), one generation per round: the key keeps
-- only the longest chain so far. A chain stops at a parent that names no process, at one already in it (a
-- cycle), at the depth, or at a parent with no row in the process table (no round extends it).
chains(process_guid, next_guid, members) USING KEY (process_guid) AS (
    SELECT p.process_guid, p.parent_process_guid, [p.process_guid]
    FROM processes AS p
    SEMI JOIN changed USING (process_guid)
    UNION
    SELECT c.process_guid, parent.parent_process_guid, list_append(c.members, parent.process_guid)
    FROM processes AS parent
    JOIN chains AS c ON parent.process_guid = c.next_guid
    WHERE len(c.members) <= {{ depth }}
      AND NOT list_contains(c.members, c.next_guid)
      AND NOT {{ names_no_process('c.next_guid') }}
),
-- Every process a chain names, with what the rows show of it: the keyed table's wide columns read once.
described AS MATERIALIZED (
    SELECT process_guid, process_path, process_command_line
    FROM {{ ref('sysmon_process_create_table') }}
    WHERE process_guid IN (SELECT unnest(members) FROM chains)
),
ancestries AS (
    SELECT a.process_guid,
        list({
            'process_guid': d.process_guid,
            'process_path': d.process_path,
            'process_command_line': d.process_command_line} ORDER BY a.generation) AS ancestors
    FROM (
        SELECT process_guid, unnest(members[2:]) AS ancestor, generate_subscripts(members[2:], 1) AS generation
        FROM chains
    ) AS a
    JOIN described AS d ON d.process_guid = a.ancestor
    GROUP BY a.process_guid
),
chain_rows AS (
    SELECT c.process_guid, c.next_guid, c.members,
        coalesce(a.ancestors, CAST([] AS STRUCT(process_guid VARCHAR, process_path VARCHAR, process_command_line VARCHAR)[]))
            AS ancestors
    FROM chains AS c
    LEFT JOIN ancestries AS a USING (process_guid)
)
SELECT
    p.process_guid,
    p.process_path,
    p.process_command_line,
    c.ancestors,
    len(c.ancestors) AS depth,
    CASE
        WHEN {{ names_no_process('c.next_guid') }} THEN 'root'
        WHEN list_contains(c.members, c.next_guid) THEN 'cycle'
        -- decided before 'missing_parent', so that a row never depends on a process beyond the depth (which no
        -- later batch would rewrite it for)
        WHEN len(c.ancestors) >= {{ depth }} THEN 'depth_limit'
        ELSE 'missing_parent'
    END AS chain_end,
    array_to_string(
        list_append(list_reverse([{{ file_name('a.process_path') }} FOR a IN c.ancestors]),
                    {{ file_name('p.process_path') }}),
        ' > ') AS lineage,
    -- The order this version of the row was written in: higher than every row already in the table, so that a
    -- rewritten row always replaces the one before (with shards, the table's upsert keeps the higher _seq).
    {% if is_incremental() %}(SELECT coalesce(max(_seq), 0) FROM {{ this }}){% else %}0{% endif %}
        + row_number() OVER (ORDER BY p.process_guid) AS _seq
FROM chain_rows AS c
JOIN described AS p USING (process_guid)
